"""The workdir lock: a second job is refused at once naming the holder, a dead holder's lock is
taken over with a log line, the lock goes on every exit, only process 0 takes it, and a refused
job writes nothing."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dss import workdir
from dss.errors import UserError

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from dss import workdir
with workdir.lock(sys.argv[1], "dss.fake_job", is_writer=True):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_records_its_holder_and_goes_on_exit(tmp_path):
    with workdir.lock(tmp_path, "dss.eval", is_writer=True) as path:
        holder = json.loads(path.read_text())
        assert path == tmp_path / workdir.LOCK_FILE
        assert (holder["host"], holder["pid"], holder["job"]) == (socket.gethostname(), os.getpid(), "dss.eval")
        assert holder["started"].endswith("+00:00")
    assert not path.exists()
    with pytest.raises(RuntimeError, match="job failed"):
        with workdir.lock(tmp_path, "dss.eval", is_writer=True):
            raise RuntimeError("job failed")
    assert list(tmp_path.iterdir()) == []


def test_a_second_job_is_refused_naming_the_holder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    proc = _holder_process(tmp_path)
    try:
        before = sorted(p.name for p in tmp_path.iterdir())
        began = time.perf_counter()
        with pytest.raises(UserError) as err:
            with workdir.lock(tmp_path, "dss.train", is_writer=True):
                pytest.fail("a second job got the lock")
        assert time.perf_counter() - began < 1  # at once
        assert str(err.value).startswith(f"{tmp_path} is in use by dss.fake_job (pid {proc.pid} on "
                                         f"{socket.gethostname()}, since ")
        assert f"delete {tmp_path / workdir.LOCK_FILE}" in str(err.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # the refused job wrote nothing
    finally:
        proc.send_signal(signal.SIGTERM)  # the holder unwinds on SIGTERM and releases the lock
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not (tmp_path / workdir.LOCK_FILE).exists()
    with workdir.lock(tmp_path, "dss.train", is_writer=True):
        pass


def test_a_dead_holders_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
    pid = _dead_pid()
    stale = {"host": socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00+00:00", "job": "dss.eval"}
    (tmp_path / workdir.LOCK_FILE).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="dss.workdir"):
        with workdir.lock(tmp_path, "dss.landscape", is_writer=True) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: took over the lock of dss.eval (pid {pid} on {socket.gethostname()}, since "
        "2026-01-01T00:00:00+00:00): that process is gone"]


def test_another_hosts_lock_is_not_taken_over(tmp_path):
    other = {"host": "another-host", "pid": _dead_pid(), "started": "2026-01-01T00:00:00+00:00", "job": "dss.train"}
    (tmp_path / workdir.LOCK_FILE).write_text(json.dumps(other))
    with pytest.raises(UserError, match=r"in use by dss.train \(pid \d+ on another-host"):
        workdir.acquire(tmp_path, "dss.eval")


def test_only_process_0_takes_it_and_a_new_empty_directory_goes(tmp_path):
    with workdir.lock(tmp_path / "run", "dss.eval", is_writer=False) as path:
        assert path is None and not (tmp_path / "run").exists()
    with workdir.lock(tmp_path / "run", "dss.eval", is_writer=True):
        assert (tmp_path / "run" / workdir.LOCK_FILE).exists()
    assert not (tmp_path / "run").exists()  # created here and left empty: removed


def test_outputs_inside_the_package_are_refused():
    with pytest.raises(UserError, match="is inside the dss package"):
        workdir.acquire(workdir.PACKAGE_DIR / "tables", "dss.tables")


def test_a_cli_job_on_a_held_directory_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "config.json").write_text("{}")  # enough for the check; the lock comes before loading
    path = workdir.acquire(run / "eval", "dss.eval")
    try:
        proc = subprocess.run([sys.executable, "-m", "dss.eval", "--config", "configs/tiny.py", "--workdir", str(run)],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        workdir.release(path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "Traceback" in line or line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"error: {run / 'eval'} is in use by dss.eval (pid {os.getpid()} on ")
    assert sorted(p.name for p in run.iterdir()) == ["eval", "export"] and not list((run / "eval").iterdir())
