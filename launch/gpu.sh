#!/usr/bin/env bash
# Pre-train on one machine with all its local GPUs: one process, JAX sees every GPU, the config's
# mesh spans them (data axis -1 = all devices unless --mesh says otherwise), bf16 compute.
#
#   launch/gpu.sh --config PATH[:VARIANT] --workdir DIR [options] [-- extra pretrain flags]
#
# Options:
#   --gpus LIST        CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all)
#   --mesh SHAPE       config.mesh.shape over (data, fsdp, tensor), e.g. '(-1,1,1)' (default) or
#                      '(2,4,1)' for 8 GPUs with FSDP 4; see docs/scaling.md
#   --dtype DTYPE      compute dtype: bfloat16 (default) or float32 (config.train.compute_dtype)
#   --mem-fraction F   XLA_PYTHON_CLIENT_MEM_FRACTION, the GPU memory JAX preallocates (default 0.9)
#   --dry-run          print the command (shell-quoted) instead of running it
# Environment: PYTHON (default: .venv/bin/python if present, else python3).
#
# Example:
#   launch/gpu.sh --config configs/wav2vec2_conformer.py:S --workdir runs/w2v2-S -- --config.data.batch_size=64
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $HERE/.venv/bin/python ]]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
CONFIG=""
WORKDIR=""
GPUS=""
MESH="(-1,1,1)"
DTYPE=bfloat16
MEM_FRACTION=0.9
DRY_RUN=0
EXTRA=()

die() { echo "gpu.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --mesh) MESH=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --mem-fraction) MEM_FRACTION=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $CONFIG ]] || die "--config PATH[:VARIANT] is required"
[[ -n $WORKDIR ]] || die "--workdir DIR is required"
case "$DTYPE" in bfloat16|float32) ;; *) die "--dtype must be bfloat16 or float32, not '$DTYPE'" ;; esac

# Quotes a word for a POSIX shell like Python's shlex.quote: as is if safe, else in single quotes.
q() {
  local s=$1 sq="'"
  if [[ -n $s && $s != *[^A-Za-z0-9_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//$sq/$sq\\$sq$sq}"
  fi
}

# JAX_PLATFORMS=cuda: fail loudly instead of silently training on the CPU when no GPU is usable.
ENV=(JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION" TF_CPP_MIN_LOG_LEVEL=2)
[[ -z $GPUS ]] || ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")
CMD=(env "${ENV[@]}" "$PYTHON" -m audiossl_jax.cli pretrain --config "$CONFIG" --workdir "$WORKDIR"
     "--config.mesh.shape=$MESH" "--config.train.compute_dtype=$DTYPE" "${EXTRA[@]+"${EXTRA[@]}"}")

line=""
for word in "${CMD[@]}"; do line+="${line:+ }$(q "$word")"; done
if [[ $DRY_RUN == 1 ]]; then
  echo "$line"
  exit 0
fi
echo "+ $line" >&2
cd "$HERE"
exec "${CMD[@]}"
