#!/usr/bin/env bash
# Submit a sweep to SLURM: the shared upstream run as one job, then every other run as its own
# job (launch/slurm.sbatch) that starts only once the upstream has finished well
# (--dependency=afterok:UPSTREAM; --kill-on-invalid-dep=yes drops them if it fails).
#
#   launch/slurm_sweep.sh experiments/showcase.py /shared/runs/showcase [sbatch options ...]
#   DRY_RUN=1 launch/slurm_sweep.sh experiments/showcase.py /shared/runs/showcase --nodes=2
#
# The runs are those of `python -m rlhf_jax.sweep --emit_commands` (ONLY=NAME: those whose name
# contains NAME). Paths are relative to the repository root, where the jobs are submitted.
# Each job logs to ROOT/logs/NAME-JOBID.out; the sbatch options given here (after the
# defaults in launch/slurm.sbatch) apply to every job. ROOT must be on storage every node
# shares. DRY_RUN=1 prints the commands as a shell script instead of submitting.
# PYTHON (default python3) reads the sweep here and runs the jobs.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [ONLY=NAME] [DRY_RUN=1] $0 SWEEP_FILE ROOT [sbatch options ...]" >&2
  exit 2
fi
sweep=$1 root=$2
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
dry_run=0
if [ -n "${DRY_RUN:-}" ] && [ "$DRY_RUN" != 0 ]; then dry_run=1; fi

sq() {  # one word, shell-quoted only where it needs it (as Python's shlex.quote)
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote() {
  local out="" word
  for word in "$@"; do out+=" $(sq "$word")"; done
  printf '%s' "${out# }"
}

# --emit_commands prints the upstream's command first when there is one; ask the sweep file
# which run that is (its work directory) rather than guess from the order.
upstream_dir=$("$python" -c 'import os, sys
from rlhf_jax.sweep import load_sweep
sweep = load_sweep(sys.argv[1])
print(os.path.join(sys.argv[2], sweep.upstream.name) if sweep.upstream else "")' "$sweep" "$root")
emitted=$("$python" -m rlhf_jax.sweep --sweep="$sweep" --root="$root" --emit_commands ${ONLY:+--only="$ONLY"})

if [ "$dry_run" = 1 ]; then echo "mkdir -p $(sq "$root/logs")"; else mkdir -p "$root/logs"; fi
upstream_job=""
first=1
while IFS= read -r line; do
  [ -n "$line" ] || continue
  # A line is shlex.join([python, -m, rlhf_jax.main, --config=C, --workdir=W, overrides...]).
  eval "words=($line)"
  if [ "${#words[@]}" -lt 5 ] || [ "${words[1]} ${words[2]}" != "-m rlhf_jax.main" ] \
      || [[ ${words[3]} != --config=* ]] || [[ ${words[4]} != --workdir=* ]]; then
    echo "error: unexpected line from rlhf_jax.sweep --emit_commands: $line" >&2
    exit 1
  fi
  config=${words[3]#--config=} workdir=${words[4]#--workdir=}
  name=$(basename "$workdir")
  submit=(sbatch --parsable --job-name="$name" --output="$root/logs/$name-%j.out")
  is_upstream=0
  if [ "$first" = 1 ] && [ -n "$upstream_dir" ]; then
    if [ "$workdir" != "$upstream_dir" ]; then
      echo "error: expected the upstream run ($upstream_dir) first, got $workdir" >&2
      exit 1
    fi
    is_upstream=1
  elif [ -n "$upstream_dir" ]; then
    if [ "$dry_run" = 1 ]; then
      submit+=(--dependency=afterok:UPSTREAM_JOB --kill-on-invalid-dep=yes)  # the variable, printed below
    else
      submit+=(--dependency="afterok:$upstream_job" --kill-on-invalid-dep=yes)
    fi
  fi
  submit+=("$@" launch/slurm.sbatch "$config" "$workdir" "${words[@]:5}")
  first=0
  if [ "$dry_run" = 1 ]; then
    text=$(quote "${submit[@]}")
    text=${text//afterok:UPSTREAM_JOB/afterok:\$upstream_job}
    if [ "$is_upstream" = 1 ]; then echo "upstream_job=\$($text)"; else echo "$text"; fi
    continue
  fi
  job=$("${submit[@]}")
  job=${job%%;*}  # --parsable prints "id" or "id;cluster"
  echo "$name: job $job${upstream_job:+ (after $upstream_job)}"
  if [ "$is_upstream" = 1 ]; then upstream_job=$job; fi
done <<<"$emitted"
