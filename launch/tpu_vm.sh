#!/usr/bin/env bash
# Run a dss job on every worker of a Cloud TPU VM (single host or pod slice).
#   TPU=my-v5e-32 ZONE=us-west4-a ./launch/tpu_vm.sh dss.train --config configs/tiny.py
# Every worker installs this checkout and runs the same command; jax.distributed.initialize()
# inside the job discovers the pod. Set REPO to the checkout path on the workers (default ~/dss).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
REPO=${REPO:-~/dss}
MODULE=${1:?usage: tpu_vm.sh MODULE [ARGS...]}; shift
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU:$REPO"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $REPO && python3 -m pip install -q -e '.[tpu]' && python3 -m $MODULE $ARGS"
