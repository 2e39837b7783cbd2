#!/usr/bin/env bash
# The accelerator figures: gpt2_small pretraining MFU, decode at batch 256 against the memory
# roofline, and the generation share of a 256 x (256 -> 256) PPO iteration. Each workload
# runs in its own process (an out-of-memory in one leaves the others). Then issue 41's rollouts:
# 512 responses within a 1000-token budget, log-normal and uniform lengths, static against
# continuous batching with a quarter and a half of the rows as slots, the paged cache (XLA's
# attention over the pages and the Pallas kernel), and the update half packed against padded
# (rl_update); each rollout side also gives its fraction of the memory roofline (the weights once
# a step, each token's context once, over the bandwidth an elementwise pass reaches). One JSON
# line each;
# full logs in $LOGS (default /tmp/rlhf_jax_gpu).
#
#   benchmarks/gpu.sh [--repeats=5] [--preset=gpt2_small]   (and --preset=llama_1b)
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${LOGS:-/tmp/rlhf_jax_gpu}
mkdir -p "$logs"
run() {
  local name=$1
  shift
  python3 benchmarks/run.py "$@" > "$logs/$name.json" 2> "$logs/$name.log" \
    || echo "{\"workload\": \"$name\", \"error\": \"$(tail -n 1 "$logs/$name.log" | tr -d '"\\')\"}" > "$logs/$name.json"
  cat "$logs/$name.json"
}
for rows in ${PRETRAIN_ROWS:-16 32}; do
  run "pretrain_$rows" --workload=pretrain --rows="$rows" "$@"
done
run decode --workload=decode "$@"
run ppo_large --workload=ppo_large "$@"
for dist in lognormal uniform; do
  lengths="$logs/${dist}_1000_512.txt"
  python3 benchmarks/lengths.py --dist="$dist" --budget=1000 --rows=512 --out="$lengths"
  for slots in 128 256; do
    run "rollout_${dist}_$slots" --workload=rollout --lengths="$lengths" --budget=1000 --slots="$slots" "$@"
  done
  for kernel in xla pallas; do  # the paged cache at half the continuous one, XLA's attention and Pallas's kernel
    run "rollout_${dist}_paged_$kernel" --workload=rollout --lengths="$lengths" --budget=1000 --slots=256 --paged \
      --paged_attention="$kernel" "$@"
  done
  run "rl_update_$dist" --workload=rl_update --lengths="$lengths" --budget=1000 "$@"
done
