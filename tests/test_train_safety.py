"""A run fails safe: an unreadable checkpoint falls back to the one before, an interrupted save is
reported, a finished run says so, a restart from scratch starts its logs over, dead training
stops without an export, and a busy workdir is refused at once."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from baseline_tools import REPO, tiny_config, use_shared_cache
from dss import train as dss_train
from dss.health import TrainingFailed

SFT = {"objective.name": "sft", "train.export": False, "train.checkpoint_every": 1, "train.keep": 2}


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    use_shared_cache(tmp_path_factory)


def logged_steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_unreadable_checkpoint_falls_back_and_logs_start_over(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    dss_train.train(tiny_config(**SFT, **{"train.max_steps": 2}), tmp_path)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2"]
    damaged = max((p for p in (checkpoints / "2" / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])  # a truncated file
    (checkpoints / "3.orbax-checkpoint-tmp-1234").mkdir()  # a save that was killed

    caplog.clear()
    final = dss_train.train(tiny_config(**SFT, **{"train.max_steps": 3}), tmp_path)
    text = caplog.text
    assert "3.orbax-checkpoint-tmp-1234 was being saved when its run was stopped: discarding it" in text
    assert f"checkpoint 2 in {checkpoints} is unreadable" in text and "resuming from checkpoint 1" in text
    assert (checkpoints / "2.unreadable").is_dir()  # set aside, not deleted
    assert logged_steps(tmp_path) == [1, 2, 3]  # step 2 redone from checkpoint 1
    assert np.isfinite(final["loss"])

    caplog.clear()
    again = dss_train.train(tiny_config(**SFT, **{"train.max_steps": 3}), tmp_path)  # nothing left to do
    assert "is complete (step 3 of 3): nothing to train" in caplog.text
    assert again == final  # the last step's metrics, not {}

    # event files are named by the second they were opened in, so a new one may take an old one's
    # name: the old ones are told apart by their modification time instead
    events = tmp_path / "tensorboard"
    (events / "events.out.tfevents.1000000000.elsewhere").write_bytes(b"")
    old = list(events.glob("events.out.tfevents.*"))
    assert len(old) >= 2
    for path in old:
        os.utime(path, (1e9, 1e9))
    for path in checkpoints.iterdir():  # start over: no checkpoint at all
        os.rename(path, tmp_path / f"old_{path.name}")
    dss_train.train(tiny_config(**SFT, **{"train.max_steps": 1}), tmp_path)
    assert logged_steps(tmp_path) == [1]
    new = list(events.glob("events.out.tfevents.*"))
    assert new and all(p.stat().st_mtime > 1e9 for p in new)  # no event file of the old run left


def test_dead_training_stops_without_export(tmp_path):
    config = tiny_config(**{"objective.name": "sft", "train.lr": 1e6, "train.max_steps": 4})
    with pytest.raises(TrainingFailed, match=r"^gradient norm exactly 0 at step \d \(loss [\d.]+\): the output no "
                                             r"longer depends on the weights, training is dead; the last good "
                                             r"checkpoint is none yet; try a lower config.train.lr \(now 1e\+06\)$"):
        dss_train.train(config, tmp_path)
    assert not (tmp_path / "export").exists()


def test_a_run_refused_at_its_model_or_data_leaves_nothing(tmp_path, monkeypatch):
    """Found by trying: an unreachable hub id was a 74-line traceback with dss_config.json written,
    and data too long for max_length a ValueError traceback leaving template_vars.json (the date)."""
    from dss.errors import MissingPath, UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingPath, match=r"^nobody/no-such-model: not a local directory, and fetching it from the "
                                          r"Hugging Face Hub failed: [^\n]+$"):
        dss_train.train(tiny_config(**{"model.path": "nobody/no-such-model"}), tmp_path / "hub")
    with pytest.raises(UserError, match=r"^0 usable examples, fewer than config.train.global_batch = 8 \(40 rows "
                                        r"read, 0 bad, 40 longer than config.data.max_length = 8\); give more data"):
        dss_train.train(tiny_config(**{"data.max_length": 8}), tmp_path / "short")
    for name in ("hub", "short"):
        assert not (tmp_path / name).exists() or not list((tmp_path / name).iterdir()), name


def test_a_batch_with_no_weight_is_not_dead_training():
    """Rejection sampling that dropped every example of a batch gives a zero gradient legitimately
    (found when RS kept 4 of 100 examples: batches of 32 without one of them)."""
    from dss.health import Health

    health = Health(vocab_size=1024, lr=1e-3)
    health.check(1, {"loss": 0.0, "grad_norm": 0.0, "n_tokens": 1957.0, "example_weight": 0.0}, "none yet")
    with pytest.raises(TrainingFailed, match="gradient norm exactly 0 at step 2"):
        health.check(2, {"loss": 0.3, "grad_norm": 0.0, "n_tokens": 1957.0, "example_weight": 0.07}, "none yet")


def test_a_busy_workdir_is_refused_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "started": "2026-12-07T00:00:00Z", "job": "dss.train",
                "command": "python -m dss.train"}
        (tmp_path / "dss.lock").write_text(json.dumps(lock))
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "dss.train", "--config", str(REPO / "configs" / "tiny.py"),
                               "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
        seconds = time.time() - start
    finally:
        holder.kill()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} is in use by dss.train (pid {holder.pid}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dss.lock"]  # nothing written
    print(f"refused in {seconds:.1f} s")
