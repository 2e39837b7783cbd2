#!/usr/bin/env bash
# Builds a peer's virtual environment at the versions it pins. Idempotent: does nothing when all pins are met.
#   bash benchmarks/peers/setup.sh          # .venv: CPU-only torch + Hugging Face TRL (requirements.txt), trl_bench.py
#   bash benchmarks/peers/setup.sh tunix    # .venv-tunix: Google's Tunix + its CPU JAX (tunix_requirements.txt)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER="${1:-trl}"
case "$PEER" in
  trl) VENV="$HERE/.venv"; REQS="$HERE/requirements.txt" ;;
  tunix) VENV="$HERE/.venv-tunix"; REQS="$HERE/tunix_requirements.txt" ;;
  *) echo "setup.sh: unknown peer '$PEER' (trl or tunix)" >&2; exit 2 ;;
esac
NAME="benchmarks/peers/$(basename "$VENV")"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

# Prints "name version" for each pin; exits 1 if any is missing or at another version.
check_pins() {
  "$VENV/bin/python" - "$REQS" <<'PY'
import sys
from importlib import metadata
ok = True
for line in open(sys.argv[1]):
  line = line.split("#")[0].strip()
  if not line:
    continue
  name, want = line.split("==")
  try:
    have = metadata.version(name)
  except metadata.PackageNotFoundError:
    have = "missing"
  ok &= have == want
  print(f"  {name} {have}" + ("" if have == want else f" (want {want})"))
sys.exit(0 if ok else 1)
PY
}

if [[ -x "$VENV/bin/python" ]] && check_pins >/dev/null 2>&1; then
  echo "$NAME already up to date:"
  check_pins
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
if [[ "$PEER" == trl ]]; then
  # CPU-only torch first, so the plain PyPI resolve below finds it satisfied and pulls no CUDA wheels.
  # Short timeout/retries: where the PyTorch index is unreachable, pip falls back to its configured sources.
  "${PIP[@]}" --timeout 15 --retries 1 --index-url "$TORCH_INDEX" "$(grep '^torch==' "$REQS")"
fi
# Tunix: plain `jax` from PyPI is the CPU build (jaxlib carries the CPU backend; no CUDA plugin is pinned).
"${PIP[@]}" -r "$REQS"
echo "$NAME installed:"
check_pins
