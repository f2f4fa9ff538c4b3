"""Run as 2 processes by tests/test_multihost.py: process 0's objects reach every host
(`broadcast_object`, and so the run's template date when the hosts' clocks disagree), and
`round_robin` gives each host its items in turn and every host each round's results in order."""

import jax

from dss import cli, distributed, templating


def main(config, workdir):
    distributed.initialize(config)
    me = jax.process_index()
    # each host's own object, of its own size: every host gets process 0's
    got = distributed.broadcast_object({"host": me, "text": "x" * (5000 * (me + 1))})
    assert got == {"host": 0, "text": "x" * 5000}, got["host"]
    templating.today = lambda: ("26 Jul 2024", "27 Jul 2024")[me]  # host 1 starts after midnight
    fixed = templating.run_template_vars({}, workdir)
    assert fixed == {"date_string": "26 Jul 2024"}, fixed

    ran = []
    rounds = list(distributed.round_robin(list("abcde"), lambda item, k: ran.append(k) or [(item, me)]))
    assert rounds == [[("a", 0), ("b", 1)], [("c", 0), ("d", 1)], [("e", 0)]], rounds
    assert ran == list(range(me, 5, 2)), ran
    print(f"process {me}: got process 0's object and date {fixed['date_string']}; round robin ran items {ran}")


if __name__ == "__main__":
    cli.launch("multihost_objects")  # this file, imported by name (the script's directory is on sys.path)
