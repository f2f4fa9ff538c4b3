"""launch/ scripts: --dry-run prints the exact command every worker runs, and runs nothing."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _dry_run(script: str, *args: str, **env) -> list[str]:
    proc = subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **env}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_tpu_vm_dry_run_prints_each_workers_command():
    lines = _dry_run("tpu_vm.sh", "dss.train", "--config", "configs/paper/table1.py:star_dss,harmful=/d/h 1.jsonl",
                     TPU="pod", ZONE="us-west4-a", WORKERS="4")
    assert lines[0] == "copy: gcloud compute tpus tpu-vm scp --recurse --zone us-west4-a --worker=all . pod:~/dss"
    job = ("cd ~/dss && python3 -m pip install -q -e '.[tpu]' && python3 -m dss.train --config "
           "configs/paper/table1.py:star_dss\\,harmful=/d/h\\ 1.jsonl --config.distributed=True")
    assert lines[1:] == [f'worker {i}: gcloud compute tpus tpu-vm ssh pod --zone us-west4-a --worker={i} '
                         f'--command "{job}"' for i in range(4)]


def test_tpu_vm_needs_its_settings():
    proc = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "--dry-run", "dss.train"], cwd=REPO, text=True,
                          capture_output=True, env={k: v for k, v in os.environ.items() if k not in ("TPU", "ZONE")})
    assert proc.returncode != 0 and "set TPU to the TPU VM name" in proc.stderr


def test_slurm_dry_run_prints_each_tasks_command():
    lines = _dry_run("slurm_gpu.sbatch", "dss.train", "--config", "configs/tiny.py", NODES="2")
    assert lines == [f"task {i}: SLURM_PROCID={i} SLURM_NTASKS=2 SLURM_LOCALID=0 python -m dss.train --config "
                     "configs/tiny.py --config.distributed=True " for i in range(2)]
