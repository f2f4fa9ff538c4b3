"""dss.distributed on one process (its multi-host behaviour: tests/test_multihost.py)."""

from dss import distributed


def test_round_robin_hands_over_each_round_before_computing_the_next():
    computed = []

    def make_rows(item, index):
        computed.append(index)
        return [f"{item}.0", f"{item}.1"]

    rounds = distributed.round_robin(["a", "b", "c"], make_rows)
    assert next(rounds) == ["a.0", "a.1"] and computed == [0]  # recorded (a resumable file) before "b" runs
    assert list(rounds) == [["b.0", "b.1"], ["c.0", "c.1"]] and computed == [0, 1, 2]


def test_round_robin_unshared_and_empty():
    assert list(distributed.round_robin(["a", "b"], lambda item, k: [(item, k)], shared=False)) == [[("a", 0)], [("b", 1)]]
    assert list(distributed.round_robin([], lambda item, k: [item])) == []


def test_broadcast_object_on_one_host_is_the_object():
    variables = {"date_string": "26 Jul 2024"}
    assert distributed.broadcast_object(variables) is variables
