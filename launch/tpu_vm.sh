#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice: create it, set up every worker, run a config on all workers,
# follow the logs, delete it.
#
#   launch/tpu_vm.sh [options] COMMAND [-- extra pretrain flags, e.g. --config.train.steps=1000]
#
# Commands:
#   create   gcloud compute tpus tpu-vm create (spot/preemptible with --spot/--preemptible)
#   setup    copy this checkout (or clone --repo) to every worker, make a venv, pip install -e . with
#            jax[tpu] pinned to setup.py's jax and the rest pinned by constraints.txt
#   run      start `audiossl pretrain --distributed` on all workers in the background (nohup); it
#            resumes from the latest checkpoint in --workdir, so `run` again after a preemption
#   logs     follow worker 0's log until the run ends; exits with the run's exit status
#   stop     SIGTERM the run on all workers: it checkpoints and exits
#   delete   delete the TPU VM
#   all      create, setup, run, logs, then delete if the run succeeded (kept for debugging if not)
#
# Options (environment variable in brackets):
#   --name NAME                TPU VM name [TPU_NAME]                                    (required)
#   --zone ZONE                e.g. us-central2-b [TPU_ZONE]                             (required)
#   --project PROJECT          GCP project (default: gcloud's configured project) [TPU_PROJECT]
#   --accelerator-type TYPE    e.g. v4-32, v5litepod-16, v6e-8 [TPU_TYPE] (default v4-8)
#   --version VERSION          TPU software version (default from the type: v6e -> v2-alpha-tpuv6e,
#                              v5p -> v2-alpha-tpuv5, v5litepod -> v2-alpha-tpuv5-lite, else
#                              tpu-ubuntu2204-base)
#   --spot | --preemptible     cheaper capacity that can be reclaimed (SIGTERM -> checkpoint)
#   --repo URL [--ref REF]     git clone URL@REF on the workers instead of copying this checkout
#   --config PATH[:VARIANT]    config to run, relative to the repo (e.g. configs/eat.py:base)
#   --workdir gs://BUCKET/DIR  checkpoints, metrics and config; must be on GCS (all hosts write to it)
#   --worker N                 worker whose log `logs` follows (default 0)
#   --keep                     `all` does not delete the VM at the end
#   --dry-run                  print the exact commands (one per line, shell-quoted) instead of running them
#
# Example:
#   launch/tpu_vm.sh --name ssl-v4-32 --zone us-central2-b --accelerator-type v4-32 --spot \
#       --config configs/eat.py:base --workdir gs://my-bucket/eat-base all \
#       -- --config.data.train_dir=gs://my-bucket/audioset/train
set -euo pipefail

GCLOUD=${GCLOUD:-gcloud}
NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR_TYPE=${TPU_TYPE:-v4-8}
VERSION=""
CAPACITY=""
REPO_URL=""
REF="main"
CONFIG=""
WORKDIR=""
LOG_WORKER=0
KEEP=0
DRY_RUN=0
COMMAND=""
EXTRA=()

REMOTE_DIR='~/audiossl-jax'          # expanded by the remote shell
RUN_LOG='~/audiossl-run.log'
RUN_PID='~/audiossl-run.pid'
RUN_RC='~/audiossl-run.rc'
LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --accelerator-type) ACCELERATOR_TYPE=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --spot) CAPACITY=--spot; shift ;;
    --preemptible) CAPACITY=--preemptible; shift ;;
    --repo) REPO_URL=$2; shift 2 ;;
    --ref) REF=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --worker) LOG_WORKER=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    create|setup|run|logs|stop|delete|all)
      [[ -z $COMMAND ]] || die "one command at a time (got $COMMAND and $1)"
      COMMAND=$1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n $COMMAND ]] || die "give a command: create|setup|run|logs|stop|delete|all (see --help)"
[[ -n $NAME ]] || die "--name (or TPU_NAME) is required"
[[ -n $ZONE ]] || die "--zone (or TPU_ZONE) is required"
if [[ -z $VERSION ]]; then
  case "$ACCELERATOR_TYPE" in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi
JAX_VERSION=$(sed -n 's/.*"jax==\([^"]*\)".*/\1/p' "$HERE/setup.py")
[[ -n $JAX_VERSION ]] || die "cannot read the jax pin from $HERE/setup.py"

# Quotes a word for a POSIX shell like Python's shlex.quote: as is if safe, else in single quotes.
q() {
  local s=$1 sq="'"
  if [[ -n $s && $s != *[^A-Za-z0-9_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//$sq/$sq\\$sq$sq}"
  fi
}

# Runs (or, with --dry-run, prints) one command, shell-quoted on one line.
run_cmd() {
  local line="" word
  for word in "$@"; do line+="${line:+ }$(q "$word")"; done
  if [[ $DRY_RUN == 1 ]]; then
    echo "$line"
  else
    echo "+ $line" >&2
    "$@"
  fi
}


GCLOUD_SCOPE=(--zone="$ZONE")
[[ -z $PROJECT ]] || GCLOUD_SCOPE+=(--project="$PROJECT")

ssh_all() { run_cmd "$GCLOUD" compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all --command="$1"; }

do_create() {
  local args=(--accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
  [[ -z $CAPACITY ]] || args+=("$CAPACITY")
  run_cmd "$GCLOUD" compute tpus tpu-vm create "$NAME" "${GCLOUD_SCOPE[@]}" "${args[@]}"
}

# Joins remote shell snippets with `sep` (default " && ").
join() { local sep=$1 out="" part; shift; for part in "$@"; do out+="${out:+$sep}$part"; done; printf '%s' "$out"; }

do_setup() {
  if [[ -n $REPO_URL ]]; then
    ssh_all "$(join "; " \
      "if [ -d $REMOTE_DIR/.git ]" \
      "then git -C $REMOTE_DIR fetch --depth 1 origin $(q "$REF") && git -C $REMOTE_DIR checkout --force FETCH_HEAD" \
      "else git clone --depth 1 --branch $(q "$REF") $(q "$REPO_URL") $REMOTE_DIR" \
      "fi")"
  else
    # Tracked and untracked-but-not-ignored files of this checkout (no .venv, runs/, caches).
    local tarball=${TMPDIR:-/tmp}/audiossl-jax-$NAME.tar.gz
    run_cmd bash -c "cd $(q "$HERE") && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(q "$tarball")"
    run_cmd "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$NAME:audiossl-jax.tar.gz" "${GCLOUD_SCOPE[@]}" --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar -xzf ~/audiossl-jax.tar.gz -C $REMOTE_DIR"
  fi
  # jax >= 0.7 needs Python >= 3.11; Ubuntu 22.04 TPU images ship 3.10, so install 3.11 if missing.
  local apt="sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv"
  ssh_all "set -e; if ! command -v python3.11 >/dev/null; then $apt; fi; $(join " && " \
    "cd $REMOTE_DIR" \
    "python3.11 -m venv .venv" \
    ".venv/bin/pip install -q -U pip" \
    ".venv/bin/pip install -q -c constraints.txt -e . $(q "jax[tpu]==$JAX_VERSION") -f $LIBTPU_INDEX" \
    ".venv/bin/python -c 'import jax, audiossl_jax; print(\"jax\", jax.__version__)'")"
}

do_run() {
  [[ -n $CONFIG ]] || die "run needs --config PATH[:VARIANT]"
  [[ $WORKDIR == gs://* ]] || die "run needs --workdir gs://BUCKET/DIR: every host writes its checkpoint shards there"
  local cmd=".venv/bin/audiossl pretrain --distributed --config $(q "$CONFIG") --workdir $(q "$WORKDIR")"
  local arg
  for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do cmd+=" $(q "$arg")"; done
  # The wrapper records the trainer's pid (for `stop`) and its exit status (for `logs`).
  local wrapper="$cmd & echo \$! > $RUN_PID; wait \$!; echo \$? > $RUN_RC"
  # `;` not `&&` before nohup: `a && b &` would background the whole list, holding ssh open until the run ends.
  ssh_all "cd $REMOTE_DIR || exit 1; rm -f $RUN_RC; TF_CPP_MIN_LOG_LEVEL=2 nohup bash -c $(q "$wrapper") > $RUN_LOG 2>&1 < /dev/null &"
}

do_logs() {
  run_cmd "$GCLOUD" compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker="$LOG_WORKER" --command="$(join "; " \
    "for i in \$(seq 60); do [ -s $RUN_PID ] && break; sleep 1; done" \
    "tail -n +1 -F --pid=\$(cat $RUN_PID) $RUN_LOG" \
    "for i in \$(seq 30); do [ -s $RUN_RC ] && break; sleep 1; done" \
    "exit \$(cat $RUN_RC 2>/dev/null || echo 1)")"
}

do_stop() { ssh_all "kill -TERM \$(cat $RUN_PID)"; }

do_delete() { run_cmd "$GCLOUD" compute tpus tpu-vm delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet; }

case "$COMMAND" in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  all)
    [[ -n $CONFIG ]] || die "all needs --config PATH[:VARIANT]"
    [[ $WORKDIR == gs://* ]] || die "all needs --workdir gs://BUCKET/DIR"
    do_create
    do_setup
    do_run
    rc=0
    do_logs || rc=$?
    if [[ $KEEP == 1 ]]; then
      [[ $DRY_RUN == 1 ]] || echo "tpu_vm.sh: kept $NAME (--keep); delete it with: $0 --name $NAME --zone $ZONE delete" >&2
    elif [[ $rc == 0 ]]; then
      do_delete
    else
      echo "tpu_vm.sh: the run failed (exit $rc); kept $NAME for debugging. Delete it with: $0 --name $NAME --zone $ZONE delete" >&2
      exit "$rc"
    fi
    ;;
esac
