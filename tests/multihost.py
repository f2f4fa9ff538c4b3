"""Run one dss command as N local processes of a multi-host cluster on CPU (2 devices each).

Two ways to join, as users launch: explicit coordinator arguments (`--config.cluster.*`), or the
environment SLURM's `srun` gives each task (launch/slurm_gpu.sbatch), from which JAX finds the
coordinator itself. Every run has a deadline: a hang kills all processes and fails the test with
each one's last output, so a stuck collective costs seconds, not the CI budget.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_PORT_BASE = 65535 - 2**12 + 1  # JAX's SLURM port: base + SLURM_JOB_ID % 4096


def _free_port(low: int = 20000, high: int = 65535) -> int:
    for port in range(low + os.getpid() % 997, high):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free local port")


def process_env(devices: int = 2, **extra) -> dict:
    """A CPU JAX process with `devices` devices (overriding the test session's 8), offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


@dataclass
class Process:
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cluster:
    """N processes of `argv` (a command after `python`), started at once."""

    def __init__(self, argv: list[str], n: int = 2, how: str = "coordinator", devices: int = 2,
                 heartbeat_s: int = 10, env: dict | None = None):
        if how not in ("coordinator", "slurm", "single"):
            raise ValueError(how)
        self.logdir = Path(tempfile.mkdtemp(prefix="dss-multihost-"))
        port = _free_port(SLURM_PORT_BASE if how == "slurm" else 20000)
        self.processes = []
        for i in range(n):
            args, penv = list(argv), process_env(devices, **(env or {}))
            if how != "single":
                args += ["--config.distributed=True", f"--config.cluster.heartbeat_timeout_s={heartbeat_s}",
                         "--config.cluster.init_timeout_s=60"]
            if how == "coordinator":
                args += [f"--config.cluster.coordinator=127.0.0.1:{port}", f"--config.cluster.num_processes={n}",
                         f"--config.cluster.process_id={i}"]
            elif how == "slurm":
                penv.update(SLURM_JOB_ID=str(port - SLURM_PORT_BASE), SLURM_STEP_NODELIST="localhost",
                            SLURM_NTASKS=str(n), SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                            SLURM_STEP_NUM_NODES="1", SLURM_NODELIST="localhost")
            log = self.logdir / f"process{i}.log"
            with open(log, "w") as out:
                popen = subprocess.Popen([sys.executable, *args], cwd=REPO, env=penv, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.processes.append(Process(popen, log))

    def signal_all(self, signum: int) -> None:
        for p in self.processes:
            if p.popen.poll() is None:
                p.popen.send_signal(signum)

    def wait(self, timeout: float) -> list[int]:
        """Every process's exit code; past `timeout` seconds all are killed and the test fails."""
        deadline = time.time() + timeout
        for p in self.processes:
            try:
                p.popen.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                self.signal_all(signal.SIGKILL)
                for q in self.processes:
                    q.popen.wait()
                pytest.fail(f"processes still running after {timeout:.0f} s:\n{self.tails()}")
        return [p.popen.returncode for p in self.processes]

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- process {i} (exit {p.popen.returncode}), last output:\n{p.output()[-chars:]}"
                         for i, p in enumerate(self.processes))

    def expect(self, codes: list[int], timeout: float) -> None:
        got = self.wait(timeout)
        assert got == codes, f"exit codes {got}, expected {codes}\n{self.tails()}"
