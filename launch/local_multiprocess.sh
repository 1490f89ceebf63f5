#!/usr/bin/env bash
# Runs CMD as N processes on this machine, wired together as one JAX multi-process job.
#
#   launch/local_multiprocess.sh [--dry-run] [--port P] [--gpus-per-process K] N CMD [ARGS...]
#
# e.g. 2 processes x 4 fake CPU devices = one 8-device mesh:
#   XLA_FLAGS=--xla_force_host_platform_device_count=4 launch/local_multiprocess.sh 2 \
#       .venv/bin/python -m vlp_jax.train --config configs/shapes_tiny.py:steps=20 --workdir workdirs/two_procs
#
# Process i gets JAX_COORDINATOR_ADDRESS=127.0.0.1:P, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i, which
# vlp_jax.parallel.maybe_initialize_distributed passes to jax.distributed.initialize. Each process's
# devices come from the caller's environment (XLA_FLAGS for fake CPU devices; --gpus-per-process K
# gives process i the GPUs i*K .. i*K+K-1 through JAX_LOCAL_DEVICE_IDS).
#
# Every output line is prefixed with '[i] ' (stdout stays stdout, stderr stays stderr). When a process
# exits non-zero the others get SIGTERM, then SIGKILL after LOCAL_MP_KILL_GRACE_S seconds (default 10),
# so a dead peer never leaves the rest waiting on it. Exit status: 0 if every process exited 0, else the
# status of the first process that failed. SIGINT/SIGTERM to the launcher go to every process: train
# agrees on a step across processes, checkpoints it and exits 0; the launcher waits for that up to
# LOCAL_MP_STOP_GRACE_S seconds (default 120), then SIGKILLs what is left, and exits with the
# processes' status (0 when all stopped cleanly).
#
# --dry-run prints, per process, the environment it would add and the command, and runs nothing.
# The port defaults to a free one picked at random (LOCAL_MP_PORT overrides it).
set -euo pipefail
{  # read whole before it runs: editing this file (a git pull) cannot break a launch in progress

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
port="${LOCAL_MP_PORT:-}"
gpus_per_process=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --port|--gpus-per-process)
      [[ $# -ge 2 ]] || { echo "local_multiprocess.sh: $1 needs a value" >&2; exit 2; }
      if [[ "$1" == --port ]]; then port="$2"; else gpus_per_process="$2"; fi
      shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --gpus-per-process=*) gpus_per_process="${1#*=}"; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "local_multiprocess.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
num_processes="$1"
shift
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: N must be a positive integer, got '$num_processes'" >&2
  exit 2
fi
if ! [[ "$gpus_per_process" =~ ^[0-9]+$ ]]; then
  echo "local_multiprocess.sh: --gpus-per-process must be an integer, got '$gpus_per_process'" >&2
  exit 2
fi
kill_grace="${LOCAL_MP_KILL_GRACE_S:-10}"
stop_grace="${LOCAL_MP_STOP_GRACE_S:-120}"

port_in_use() {  # something answers on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ -z "$port" ]]; then
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    port_in_use "$port" || break
  done
fi
address="127.0.0.1:$port"

process_env() {  # the variables process $1 gets, one NAME=value per line
  local i="$1"
  echo "JAX_COORDINATOR_ADDRESS=$address"
  echo "JAX_COORDINATOR_BIND_ADDRESS=$address"
  echo "JAX_NUM_PROCESSES=$num_processes"
  echo "JAX_PROCESS_ID=$i"
  if [[ "$gpus_per_process" -gt 0 ]]; then
    echo "JAX_LOCAL_DEVICE_IDS=$(seq -s, $((i * gpus_per_process)) $(((i + 1) * gpus_per_process - 1)))"
  fi
}

quote() {  # the words of a command as one line a shell would read back the same
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$word "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

if [[ "$dry_run" == 1 ]]; then
  echo "# $num_processes processes, coordinator $address, XLA_FLAGS=${XLA_FLAGS:-<unset>}"
  for ((i = 0; i < num_processes; i++)); do
    assignments=()
    while IFS= read -r assignment; do
      assignments+=("$assignment")
    done < <(process_env "$i")
    echo "[$i] $(quote env "${assignments[@]}" "$@")"
  done
  exit 0
fi

prefix() {  # copies stdin to stdout, each line prefixed with $1, flushed line by line
  awk -v p="$1" '{ print p $0; fflush() }'
}

pids=()
prefixer_pids=()

signal_all() {  # signal $1 to each process's group
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "-$1" -- "-$pid" 2>/dev/null || true
  done
}

wait_then_kill() {  # waits until every process has exited or $1 seconds have passed, then SIGKILLs what is left
  local pid waited=0 alive
  while [[ "$waited" -lt $(($1 * 10)) ]]; do
    alive=0
    for pid in ${pids[@]+"${pids[@]}"}; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ "$alive" == 0 ]] && break
    sleep 0.1
    waited=$((waited + 1))
  done
  signal_all KILL
}

stop_all() {  # SIGTERM to every process, then SIGKILL once they exit or the grace period ends
  signal_all TERM
  wait_then_kill "$kill_grace"
}

release_prefixers() {  # a process killed before it opened its FIFOs leaves its prefixers blocked in open()
  local fifo
  [[ -n "${fifo_dir:-}" ]] || return 0
  for fifo in "$fifo_dir"/*; do
    [[ -p "$fifo" ]] && : <>"$fifo"  # a read-write open never blocks; closing it gives those readers EOF
  done
  return 0
}

on_signal() {  # pass a stop signal on, give the processes time to checkpoint, exit with their status
  echo "local_multiprocess.sh: got $1; passing it to all $num_processes processes" >&2
  signal_all "${1#SIG}"
  wait_then_kill "$stop_grace"
  local pid rc result=0
  for pid in ${pids[@]+"${pids[@]}"}; do
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    if [[ "$rc" != 0 && "$result" == 0 ]]; then result="$rc"; fi
  done
  release_prefixers
  wait 2>/dev/null || true  # the prefixers
  exit "$result"
}
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM

# Each process writes into two FIFOs read by its prefixers, which are waited for at the end, so the
# last lines of a process that failed are printed before the launcher exits.
fifo_dir="$(mktemp -d "${TMPDIR:-/tmp}/local_multiprocess.XXXXXX")"
trap 'rm -rf "$fifo_dir"' EXIT
for ((i = 0; i < num_processes; i++)); do
  assignments=()
  while IFS= read -r assignment; do
    assignments+=("$assignment")
  done < <(process_env "$i")
  mkfifo "$fifo_dir/$i.out" "$fifo_dir/$i.err"
  prefix "[$i] " <"$fifo_dir/$i.out" &
  prefixer_pids+=("$!")
  prefix "[$i] " <"$fifo_dir/$i.err" >&2 &
  prefixer_pids+=("$!")
  set -m  # its own process group, so that stopping it also stops whatever it started
  env "${assignments[@]}" "$@" </dev/null >"$fifo_dir/$i.out" 2>"$fifo_dir/$i.err" &
  pids+=("$!")
  set +m
done

status=0
failed=""
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  still=()
  for index in "${!running[@]}"; do
    pid="${running[$index]}"
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    for ((i = 0; i < num_processes; i++)); do
      [[ "${pids[$i]}" == "$pid" ]] && process_index="$i"
    done
    if [[ "$rc" != 0 && -z "$failed" ]]; then
      failed="$process_index"
      status="$rc"
      echo "local_multiprocess.sh: process $process_index exited with status $rc; stopping the others" >&2
      stop_all
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  [[ ${#running[@]} -gt 0 ]] && sleep 0.2
done
signal_all KILL  # leftovers of the processes (their children) would keep the output pipes open
release_prefixers
for pid in "${prefixer_pids[@]}"; do
  wait "$pid" 2>/dev/null || true
done
exit "$status"
}
