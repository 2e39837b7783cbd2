#!/usr/bin/env bash
# Run one config on this machine, keeping a log beside the run's outputs.
#
#   launch/local.sh configs/pipeline.py:tiny runs/demo [--config.field=value ...]
#
# Rerunning the same command resumes from the last checkpoint. Set DEVICES=8 to simulate
# 8 CPU devices (for trying mesh settings on a laptop).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
if [ -n "${DEVICES:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
mkdir -p "$workdir"
python3 -m rlhf_jax.main --config="$config" --workdir="$workdir" "$@" 2>&1 | tee -a "$workdir/log.txt"
