#!/usr/bin/env bash
# bench/gpu_suite.py on a lent CUDA machine, from the repo root (its python3 has jax[cuda], flax, optax;
# ml_collections is installed from .whl/ when present). Extra arguments go to gpu_suite.py.
# Writes gpu_suite.json and gpu_suite.md to $OUT, else bench/results/gpu. See bench/RESULTS.md "GPU suite".
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, flax, optax, ml_collections; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" || exit 1
exec python3 bench/gpu_suite.py "$@"
