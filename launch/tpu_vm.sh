#!/usr/bin/env bash
# Run a dss job on every worker of a Cloud TPU VM (single host or pod slice).
#   TPU=my-v5e-32 ZONE=us-west4-a ./launch/tpu_vm.sh [--dry-run] dss.train --config configs/paper/table1.py:star_dss
# Copies this checkout to every worker, installs it, and runs the same command on all of them with
# --config.distributed=True: jax.distributed.initialize() finds the pod's coordinator and each
# worker's id from the TPU metadata. REPO is the checkout path on the workers (default ~/dss);
# WORKERS (for --dry-run only) how many workers to print commands for (default 4).
# --dry-run prints the exact commands (the copy, then each worker's job) and runs nothing.
set -euo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
REPO=${REPO:-"~/dss"}  # expanded on the workers
MODULE=${1:?usage: tpu_vm.sh [--dry-run] MODULE [ARGS...]}; shift
JOB="cd $REPO && python3 -m pip install -q -e '.[tpu]' && python3 -m $MODULE $(printf '%q ' "$@")--config.distributed=True"
COPY=(gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU:$REPO")
if [ "$DRY" = 1 ]; then
  printf 'copy: %s\n' "${COPY[*]}"
  for ((i = 0; i < ${WORKERS:-4}; i++)); do
    printf 'worker %d: gcloud compute tpus tpu-vm ssh %s --zone %s --worker=%d --command "%s"\n' "$i" "$TPU" "$ZONE" "$i" "$JOB"
  done
  exit 0
fi
"${COPY[@]}"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$JOB"
