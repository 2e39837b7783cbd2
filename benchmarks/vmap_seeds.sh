#!/usr/bin/env bash
# End-to-end wall time of N seeds of one RL config: N runs one after another vs one
# vmapped run (--config.vmap_seeds=N). Each includes start-up, loading, compilation,
# evaluation and checkpoints, as a researcher's sweep would. Prints one JSON line.
#
#   benchmarks/vmap_seeds.sh UPSTREAM_DIR [N] [--config.field=value ...]
#
# UPSTREAM_DIR holds finished sft/ and reward/ runs (e.g. a pipeline's workdir, or a
# showcase sweep's upstream/). Scratch runs go to a temporary directory.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 UPSTREAM_DIR [N] [--config.field=value ...]" >&2
  exit 2
fi
upstream=$1 n=${2:-4}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
common=(--config=configs/rl.py:tiny --config.init_from="$upstream/sft" --config.reward_from="$upstream/reward" "$@")
start=$(date +%s.%N)
for seed in $(seq 0 $((n - 1))); do
  python3 -m rlhf_jax.main "${common[@]}" --workdir="$scratch/seed$seed" --config.seed="$seed" > /dev/null 2>&1
done
middle=$(date +%s.%N)
python3 -m rlhf_jax.main "${common[@]}" --workdir="$scratch/vmapped" --config.vmap_seeds="$n" > /dev/null 2>&1
end=$(date +%s.%N)
python3 - "$start" "$middle" "$end" "$n" "$*" <<'PY'
import json, sys
start, middle, end, n, extra = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(json.dumps({"seeds": n, "overrides": extra, "sequential_s": round(middle - start, 1),
                  "vmapped_s": round(end - middle, 1), "speedup": round((middle - start) / (end - middle), 2)}))
PY
