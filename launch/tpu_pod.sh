#!/usr/bin/env bash
# Run a config or a sweep on a Cloud TPU VM pod slice: the same command on every worker
# (gcloud ... ssh --worker=all), each worker one JAX process; RLHF_JAX_DISTRIBUTED=auto lets
# jax.distributed.initialize() find the slice's coordinator, process count and worker id itself.
#
#   TPU=my-v4-32 ZONE=us-central2-b [PROJECT=p] launch/tpu_pod.sh setup
#   TPU=... ZONE=... launch/tpu_pod.sh CONFIG WORKDIR [--config.field=value ...]
#   TPU=... ZONE=... launch/tpu_pod.sh sweep SWEEP_FILE ROOT [--only=NAME]
#
# setup copies this checkout (tracked and untracked, not ignored, files) to REPO on every
# worker and installs it with jax[tpu]; REPO_URL=https://... clones that instead.
# WORKDIR and ROOT must be on storage every worker shares (an NFS/Filestore mount or a
# gcsfuse-mounted bucket, at the same path on every worker): run directories are plain
# paths, only process 0 writes logs and run files, and every process writes its shards of
# each checkpoint there. A worker's local disk will not do.
# A sweep runs the same runs in the same order on every worker, each run one multi-host job;
# so no --parallel (the workers would pair up different runs).
#
# Environment: TPU, ZONE (required), PROJECT, REPO (path on the workers, default
# ~/rlhf_jax), PYTHON (on the workers, default python3), DRY_RUN=1 (print the commands,
# run nothing).
set -euo pipefail
usage() {
  echo "usage: TPU=NAME ZONE=ZONE [PROJECT=P] $0 setup" >&2
  echo "       TPU=NAME ZONE=ZONE [PROJECT=P] $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  echo "       TPU=NAME ZONE=ZONE [PROJECT=P] $0 sweep SWEEP_FILE ROOT [--only=NAME]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
if [ -z "${TPU:-}" ] || [ -z "${ZONE:-}" ]; then
  echo "error: set TPU (the TPU VM's name) and ZONE" >&2
  usage
fi
repo=${REPO:-'~/rlhf_jax'}  # '~' expands on the worker
python=${PYTHON:-python3}
gcloud_args=(--zone="$ZONE")
if [ -n "${PROJECT:-}" ]; then gcloud_args+=(--project="$PROJECT"); fi

sq() {  # one word, shell-quoted only where it needs it (as Python's shlex.quote)
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote() {  # words -> one shell command line
  local out="" word
  for word in "$@"; do out+=" $(sq "$word")"; done
  printf '%s' "${out# }"
}
dry_run() { [ -n "${DRY_RUN:-}" ] && [ "$DRY_RUN" != 0 ]; }
run() {  # run a command, or under DRY_RUN=1 print it, quoted, ready to paste
  if dry_run; then quote "$@"; echo; else "$@"; fi
}
on_all_workers() {  # the same shell command on every worker of the slice
  run gcloud compute tpus tpu-vm ssh "$TPU" "${gcloud_args[@]}" --worker=all --command "$1"
}

case "$1" in
  setup)
    [ $# -eq 1 ] || usage
    install="cd $repo && $python -m pip install -U pip && $python -m pip install -e . 'jax[tpu]'"
    if [ -n "${REPO_URL:-}" ]; then
      on_all_workers "(test -d $repo || git clone $(quote "$REPO_URL") $repo) && $install"
    else
      cd "$(dirname "$0")/.."
      archive=$(mktemp -t rlhf_jax.XXXXXX.tar.gz)
      if dry_run; then
        echo "# archive: git ls-files --cached --others --exclude-standard | tar czf $archive -T -"
      else
        git ls-files --cached --others --exclude-standard | tar czf "$archive" -T -
      fi
      run gcloud compute tpus tpu-vm scp "$archive" "$TPU:/tmp/rlhf_jax.tar.gz" "${gcloud_args[@]}" --worker=all
      on_all_workers "mkdir -p $repo && tar xzf /tmp/rlhf_jax.tar.gz -C $repo && $install"
      rm -f "$archive"
    fi
    ;;
  sweep)
    [ $# -ge 3 ] || usage
    for arg in "${@:4}"; do
      case "$arg" in
        --parallel*) echo "error: no --parallel on a pod slice: every worker must run the same run at once" >&2
                     exit 2 ;;
      esac
    done
    on_all_workers "cd $repo && RLHF_JAX_DISTRIBUTED=auto $(quote "$python" -m rlhf_jax.sweep \
      --sweep="$2" --root="$3" "${@:4}")"
    ;;
  -*|"") usage ;;
  *)
    [ $# -ge 2 ] || usage
    config=$1 workdir=$2
    shift 2
    on_all_workers "cd $repo && RLHF_JAX_DISTRIBUTED=auto $(quote "$python" -m rlhf_jax.main \
      --config="$config" --workdir="$workdir" "$@")"
    ;;
esac
