#!/usr/bin/env bash
# Run one config on this machine, keeping a log beside the run's outputs.
#
#   launch/local.sh configs/pipeline.py:tiny runs/demo [--config.field=value ...]
#
# Rerunning the same command resumes from the last checkpoint. Set DEVICES=8 to simulate
# 8 CPU devices (for trying mesh settings on a laptop).
#
# PROCESSES=N starts N processes of the same command on this machine, joined by
# jax.distributed into one multi-host job (JAX_COORDINATOR_ADDRESS=localhost:PORT,
# JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i; PORT from the environment or a free one), the way a
# pod slice or a cluster runs one. On CPU the processes exchange data through gloo (JAX's
# default CPU collectives); with DEVICES=D each process has D simulated devices, N x D in all.
# (Meant for CPU: on a GPU machine every process would claim every GPU.)
# Process 0 prints to the terminal and WORKDIR/log.txt, process i writes
# WORKDIR/log_process_i.txt. If one process fails, the others are stopped (SIGTERM, then
# SIGKILL after KILL_AFTER seconds, default 20) and the script exits with its status.
# PYTHON names the interpreter (default python3).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [DEVICES=D] [PROCESSES=N [PORT=P]] $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
python=${PYTHON:-python3}
processes=${PROCESSES:-1}
if ! [[ $processes =~ ^[1-9][0-9]*$ ]]; then
  echo "error: PROCESSES must be a positive integer, got '$processes'" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
if [ -n "${DEVICES:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
mkdir -p "$workdir"
cmd=("$python" -m rlhf_jax.main --config="$config" --workdir="$workdir" "$@")

if [ "$processes" -eq 1 ]; then
  "${cmd[@]}" 2>&1 | tee -a "$workdir/log.txt"
  exit
fi

# N processes. Find a free port the way JAX's own tests do: bind to port 0 and read it back.
free_port='import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])'
port=${PORT:-$("$python" -c "$free_port")}
export JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$processes"
echo "launch/local.sh: $processes processes, coordinator $JAX_COORDINATOR_ADDRESS;" \
  "process i>0 logs to $workdir/log_process_i.txt" >&2

pids=()
stop_all() {  # SIGTERM to every process still running, SIGKILL to those left after KILL_AFTER seconds
  local pid alive waited=0
  for pid in "${pids[@]+"${pids[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
  while [ "$waited" -lt "${KILL_AFTER:-20}" ]; do
    alive=0
    for pid in "${pids[@]+"${pids[@]}"}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    if [ "$alive" -eq 0 ]; then return 0; fi
    sleep 1
    waited=$((waited + 1))
  done
  for pid in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
# Background processes of a script ignore Ctrl-C (SIGINT), so pass it (and SIGTERM) on ourselves.
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT  # nothing is left running, however this script ends

# Process 0 writes through tee (a process substitution, so its own exit status is what `wait` sees).
exec 3> >(tee -a "$workdir/log.txt")
tee_pid=${!:-}  # the process substitution (bash >= 4.4 sets $! to it)
JAX_PROCESS_ID=0 "${cmd[@]}" >&3 2>&3 &
pids+=($!)
exec 3>&-
for ((i = 1; i < processes; i++)); do
  JAX_PROCESS_ID=$i "${cmd[@]}" >>"$workdir/log_process_$i.txt" 2>&1 &
  pids+=($!)
done

# Poll rather than `wait -n`, which needs bash >= 5.1 (macOS ships 3.2).
status=0
running=("${pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    code=0
    wait "$pid" || code=$?
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$code
      for p in "${!pids[@]}"; do
        if [ "${pids[$p]}" = "$pid" ]; then log="$workdir/log_process_$p.txt"; failed=$p; fi
      done
      if [ "$failed" -eq 0 ]; then log="$workdir/log.txt"; fi
      echo "launch/local.sh: process $failed exited with status $code; stopping the others (see $log)" >&2
      stop_all
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if [ "${#running[@]}" -gt 0 ]; then sleep 1; fi
done
# tee ends when process 0's output closes; a leftover grandchild could hold it open, so not forever.
if [ -n "$tee_pid" ]; then
  for _ in 1 2 3 4 5; do
    if ! kill -0 "$tee_pid" 2>/dev/null; then break; fi
    sleep 1
  done
  kill "$tee_pid" 2>/dev/null || true
fi
exit "$status"
