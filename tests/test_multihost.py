"""Multi-host runs as 2 local CPU processes (2 devices each) against one process on the same 4-device
mesh: training with STAR and reference log-probs, stop and resume, export, a dead host."""

import json
import shutil
import signal
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import dss.models
from multihost import REPO, Cluster

TINY = str(REPO / "configs" / "tiny.py")
STEPS = 20  # the tiny config, 4 epochs x 5 steps of 8 examples, STAR-DSS (k2): room for a SIGTERM to land
EPOCHS = "--config.train.epochs=4"


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    return {"DSS_CACHE": str(tmp_path_factory.mktemp("dss_cache"))}


def _train(workdir: Path, *flags: str) -> list[str]:
    return ["-m", "dss.train", "--config", TINY, "--workdir", str(workdir), *flags]


def _script(name: str, workdir: Path) -> list[str]:
    """A test script of tests/ (run by each host) on the tiny config."""
    return [str(REPO / "tests" / name), "--config", TINY, "--workdir", str(workdir)]


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def _close(a, b, tol: float = 1e-6) -> bool:
    """Equal JSON trees, floats within `tol` (guardrail P(safe)s from other batch shapes)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def _wait_for_step(workdir: Path, step: int, cluster: Cluster, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = workdir / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        if any(p.popen.poll() is not None for p in cluster.processes):
            pytest.fail(f"a process ended before step {step}:\n{cluster.tails()}")
        time.sleep(0.2)
    pytest.fail(f"no step {step} within {timeout} s:\n{cluster.tails()}")


@pytest.mark.slow
def test_each_host_builds_only_its_rows(cache_env, tmp_path):
    cluster = Cluster(_script("multihost_batches.py", tmp_path), env=cache_env)
    cluster.expect([0, 0], timeout=240)
    assert "built rows [0, 1, 2, 3] of 8; assembled batches equal" in cluster.processes[0].output()
    assert "built rows [4, 5, 6, 7] of 8; assembled batches equal" in cluster.processes[1].output()


@pytest.mark.slow
def test_hosts_get_process_0s_objects_and_share_items_in_turn(cache_env, tmp_path):
    """broadcast_object (the template date of hosts whose clocks disagree) and round_robin."""
    cluster = Cluster(_script("multihost_objects.py", tmp_path), env=cache_env)
    cluster.expect([0, 0], timeout=120)
    for i, p in enumerate(cluster.processes):
        assert f"process {i}: got process 0's object and date 26 Jul 2024; round robin ran items {list(range(i, 5, 2))}" \
            in p.output(), cluster.tails()
    assert json.loads((tmp_path / "template_vars.json").read_text()) == {"date_string": "26 Jul 2024"}


@pytest.mark.slow
def test_two_hosts_train_stop_resume_and_export_like_one(cache_env, tmp_path):
    one = tmp_path / "one"
    Cluster(_train(one, EPOCHS), n=1, how="single", devices=4, env=cache_env).expect([0], timeout=300)
    reference = _losses(one)
    assert sorted(reference) == list(range(1, STEPS + 1))

    two = tmp_path / "two"
    Cluster(_train(two, EPOCHS, "--config.train.max_steps=4"), env=cache_env).expect([0, 0], timeout=300)
    assert sorted(_losses(two)) == [1, 2, 3, 4] and not (two / "export.tmp").exists()

    # resumed from step 4 (SLURM environment this time), then SIGTERM to both hosts mid-run
    cluster = Cluster(_train(two, EPOCHS), how="slurm", env=cache_env)
    _wait_for_step(two, 6, cluster, timeout=300)
    cluster.signal_all(signal.SIGTERM)
    cluster.expect([128 + signal.SIGTERM] * 2, timeout=120)
    stopped_at = max(_losses(two))
    assert 6 <= stopped_at < STEPS, cluster.tails()
    for p in cluster.processes:  # both hosts stopped at the same step and saved it
        assert f"stopped by signal 15 at step {stopped_at}" in p.output(), cluster.tails()
    assert (two / "checkpoints" / str(stopped_at)).is_dir()

    Cluster(_train(two, EPOCHS), env=cache_env).expect([0, 0], timeout=300)
    resumed = _losses(two)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    diff = max(abs(resumed[s] - reference[s]) for s in reference)
    print(f"2 hosts vs 1 host: max |loss diff| over {STEPS} steps = {diff:.2e} (stopped at 4 and {stopped_at})")
    assert diff <= 1e-5

    ours, theirs = (transformers.AutoModelForCausalLM.from_pretrained(d / "export").eval() for d in (two, one))
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name
    ids = torch.tensor([list(range(3, 60))])
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, atol=1e-4)
    logits = np.asarray(dss.models.load_pretrained(two / "export")(jnp.asarray(ids.numpy())))
    assert np.abs(logits - theirs(ids).logits.detach().numpy()).max() <= 1e-4


@pytest.mark.slow
def test_a_dead_host_fails_the_other_in_bounded_time(cache_env, tmp_path):
    cluster = Cluster(_train(tmp_path, "--config.train.export=False"), heartbeat_s=5, env=cache_env)
    _wait_for_step(tmp_path, 1, cluster, timeout=300)
    cluster.processes[1].popen.send_signal(signal.SIGKILL)
    start = time.time()
    codes = cluster.wait(timeout=90)
    assert codes[0] != 0 and codes[1] == -signal.SIGKILL, cluster.tails()
    out = cluster.processes[0].output()
    assert "heartbeat" in out or "another task died" in out, cluster.tails()
    print(f"surviving host failed {time.time() - start:.0f} s after the other was killed")


@pytest.mark.slow
def test_star_eval_and_landscape_on_two_hosts_equal_one(cache_env, tmp_path):
    """Every host scores / generates its share; the gathered outputs, written once, equal one host's."""
    run = tmp_path / "run"
    Cluster(_train(run, "--config.train.max_steps=1", "--config.objective.name=sft"), n=1, how="single",
            env=cache_env).expect([0], timeout=300)
    for name, n, how in (("one", 1, "single"), ("two", 2, "coordinator")):
        star_dir = tmp_path / f"star-{name}"
        star_dir.mkdir()
        shutil.copy(run / "template_vars.json", star_dir)  # the run's date, as a STAR job of that run has
        for job, workdir, flags in (
            ("dss.star", star_dir, []),
            ("dss.eval", run, [f"--config.eval.outdir={run / f'eval-{name}'}"]),
            ("dss.landscape", run, [f"--config.landscape.name=landscape-{name}", "--config.landscape.steps=3"]),
        ):
            Cluster(["-m", job, "--config", TINY, "--workdir", str(workdir), *flags], n=n, how=how,
                    env=cache_env).expect([0] * n, timeout=300)

    a, b = (np.load(tmp_path / f"star-{name}" / "star.npz") for name in ("one", "two"))
    assert a["__header__"] == b["__header__"] and len(a["safe_prob"]) > 40  # same fingerprint
    assert np.array_equal(a["char_ends"], b["char_ends"]) and np.abs(a["safe_prob"] - b["safe_prob"]).max() <= 1e-6

    one, two = run / "eval-one", run / "eval-two"
    assert _close(*(json.loads((d / "results.json").read_text()) for d in (one, two)))
    for bench in ("advbench", "gsm8k"):  # the same responses, row by row
        rows = [list(map(json.loads, (d / "generations" / f"{bench}.jsonl").read_text().splitlines())) for d in (one, two)]
        assert _close(*rows) and len(rows[0]) >= 8
    assert not list(two.rglob("*.partial.jsonl"))

    def landscape(name):
        res = json.loads((run / f"landscape-{name}" / "results.json").read_text())
        res.pop("seconds_per_point"), res.pop("first_point_seconds")  # timings
        points = map(json.loads, (run / f"landscape-{name}" / "points.jsonl").read_text().splitlines())
        timings = ("seconds", "compiling")  # each host's first point compiles
        return res, sorted(({k: v for k, v in p.items() if k not in timings} for p in points), key=lambda p: p["coeffs"])

    assert landscape("one") == landscape("two") and len(landscape("two")[1]) == 4
