#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N processes on 127.0.0.1, each with K fake CPU devices,
# joined by jax.distributed (gloo collectives) into one mesh of N*K devices.
#
#   launch/local_multihost.sh [options] -- pretrain --config PATH[:VARIANT] --workdir DIR [...]
#
# Every process runs `$PYTHON -m audiossl_jax.cli ARGS --coordinator_address 127.0.0.1:PORT
# --num_processes N --process_id i` with XLA_FLAGS=--xla_force_host_platform_device_count=K.
# The script waits for all of them and exits non-zero if any fails (75 if they stopped preempted,
# checkpointed: docs/operating.md); when one fails (or the timeout
# passes, or you press Ctrl-C) the others get SIGTERM (they checkpoint and stop), then SIGKILL after
# a grace period.
#
# Options:
#   -n, --num-processes N       processes (default 2)
#   -d, --devices-per-process K fake CPU devices per process (default 4)
#   --port PORT                 coordinator port (default: a free port)
#   --log-dir DIR               per-process logs process_<i>.log and pids process_<i>.pid
#                               (default: a new temporary directory)
#   --timeout SECONDS           stop everything after this long and exit 124 (default: none)
#   --grace SECONDS             SIGTERM -> SIGKILL delay (default 20)
#   --quiet                     do not stream process 0's log to stdout
#   --dry-run                   print the commands (shell-quoted) instead of running them
# Environment: PYTHON (default: .venv/bin/python if present, else python3); XLA_FLAGS, if set, is
# kept (the device-count flag is appended).
#
# Example:
#   launch/local_multihost.sh -n 2 -d 4 -- pretrain --config configs/wav2vec2_conformer.py:tiny \
#       --workdir runs/mh --config.data.train_dir=runs/demo/data/train
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $HERE/.venv/bin/python ]]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
NUM=2
DEVICES=4
PORT=""
LOG_DIR=""
TIMEOUT=0
GRACE=20
QUIET=0
DRY_RUN=0
ARGS=()

die() { echo "local_multihost.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num-processes) NUM=$2; shift 2 ;;
    -d|--devices-per-process) DEVICES=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --log-dir) LOG_DIR=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --grace) GRACE=$2; shift 2 ;;
    --quiet) QUIET=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; ARGS=("$@"); break ;;
    *) die "unknown argument '$1' (see --help; the CLI's arguments go after --)" ;;
  esac
done
[[ ${#ARGS[@]} -gt 0 ]] || die "give the CLI arguments after --, e.g. -- pretrain --config ... --workdir ..."
[[ $NUM =~ ^[1-9][0-9]*$ ]] || die "--num-processes must be a positive integer, not '$NUM'"
[[ $DEVICES =~ ^[1-9][0-9]*$ ]] || die "--devices-per-process must be a positive integer, not '$DEVICES'"
if [[ -z $PORT ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || die "cannot pick a free port with $PYTHON; pass --port"
fi

# Quotes a word for a POSIX shell like Python's shlex.quote: as is if safe, else in single quotes.
q() {
  local s=$1 sq="'"
  if [[ -n $s && $s != *[^A-Za-z0-9_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//$sq/$sq\\$sq$sq}"
  fi
}

command_for() {  # the argv of process $1
  CMD=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES"
       JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" -m audiossl_jax.cli "${ARGS[@]}"
       --coordinator_address "127.0.0.1:$PORT" --num_processes "$NUM" --process_id "$1")
}

if [[ $DRY_RUN == 1 ]]; then
  for ((i = 0; i < NUM; i++)); do
    command_for "$i"
    line=""
    for word in "${CMD[@]}"; do line+="${line:+ }$(q "$word")"; done
    echo "$line"
  done
  exit 0
fi

[[ -n $LOG_DIR ]] || LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/local_multihost.XXXXXX")
mkdir -p "$LOG_DIR"
PIDS=()
TAIL_PID=""
cd "$HERE"
for ((i = 0; i < NUM; i++)); do
  command_for "$i"
  "${CMD[@]}" > "$LOG_DIR/process_$i.log" 2>&1 < /dev/null &
  PIDS+=($!)
  echo $! > "$LOG_DIR/process_$i.pid"  # `env` execs python: this is the trainer's pid
done
echo "local_multihost.sh: $NUM processes x $DEVICES CPU devices, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR" >&2
if [[ $QUIET == 0 ]]; then
  tail -n +1 -f "$LOG_DIR/process_0.log" &
  TAIL_PID=$!
fi

declare -A RC=()
stop_all() {  # SIGTERM the processes still running, SIGKILL them after the grace period
  local pid waited=0
  for pid in "${PIDS[@]}"; do [[ -n ${RC[$pid]:-} ]] || kill -TERM "$pid" 2>/dev/null; done
  while ((waited < GRACE * 10)); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
INTERRUPTED=0
trap 'INTERRUPTED=1' INT TERM

START=$SECONDS
FAILED=""
STATUS=0
while :; do
  running=0
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    [[ -n ${RC[$pid]:-} ]] && continue
    if kill -0 "$pid" 2>/dev/null; then
      running=$((running + 1))
    else
      wait "$pid"
      RC[$pid]=$?
      # 75: preempted, checkpointed (audiossl_jax/cli.py EXIT_PREEMPTED): the others stop at the same step
      if [[ ${RC[$pid]} != 0 && ${RC[$pid]} != 75 && -z $FAILED && $STATUS == 0 ]]; then FAILED=$i; STATUS=${RC[$pid]}; fi
    fi
  done
  ((running == 0)) && break
  if [[ -n $FAILED ]]; then
    echo "local_multihost.sh: process $FAILED exited with status $STATUS; stopping the others" >&2
    stop_all
  elif ((INTERRUPTED)); then
    [[ $STATUS == 130 ]] || echo "local_multihost.sh: interrupted; sending SIGTERM (checkpoint and stop)" >&2
    STATUS=130
    stop_all
  elif ((TIMEOUT > 0 && SECONDS - START >= TIMEOUT)); then
    [[ $STATUS == 124 ]] || echo "local_multihost.sh: timeout after ${TIMEOUT}s; stopping all processes" >&2
    STATUS=124
    stop_all
  else
    sleep 0.2
  fi
done
if [[ -n $TAIL_PID ]]; then kill "$TAIL_PID" 2>/dev/null; wait "$TAIL_PID" 2>/dev/null; fi

for i in "${!PIDS[@]}"; do
  rc=${RC[${PIDS[$i]}]}
  if [[ $rc != 0 && $rc != 75 ]]; then
    echo "----- process $i exited with status $rc; last lines of $LOG_DIR/process_$i.log -----" >&2
    tail -n 30 "$LOG_DIR/process_$i.log" >&2
  fi
done
if [[ $STATUS == 0 ]]; then  # a failure's status first, else 75 if the run was preempted
  for i in "${!PIDS[@]}"; do [[ ${RC[${PIDS[$i]}]} =~ ^(0|75)$ ]] || STATUS=${RC[${PIDS[$i]}]}; done
  if [[ $STATUS == 0 ]]; then
    for i in "${!PIDS[@]}"; do [[ ${RC[${PIDS[$i]}]} == 0 ]] || STATUS=75; done
  fi
fi
exit "$STATUS"
