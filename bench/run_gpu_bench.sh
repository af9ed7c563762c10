#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md: run from the repo root on a CUDA machine whose python3 has
# jax[cuda], flax, optax and torch + torchaudio (ml_collections is installed from .whl/ if present).
# Results: JSON files in ${OUT:-bench/results}.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
dest=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"
bench() { timeout 420 python3 bench/bench_train_step.py --steps 12 "$@" 2>&1 | grep -v -i warn; }
bench --config configs/wav2vec2_conformer.py:S --batch 32 --frames 1000 --rounds 2 --torch-python python3 \
  --out "$dest/gpu_wav2vec2_S_f32.json"
bench --config configs/wav2vec2_conformer.py:S --batch 32 --frames 1000 --rounds 2 --torch-python python3 \
  --out "$dest/gpu_wav2vec2_S_bf16.json" --config.train.compute_dtype=bfloat16
bench --config configs/eat.py:base --batch 12 --frames 1024 --mel 128 --out "$dest/gpu_eat_base_bf16.json" \
  --config.train.compute_dtype=bfloat16
bench --config configs/slicer.py:paper --batch 256 --frames 96 --mel 64 --out "$dest/gpu_slicer_paper_bf16.json" \
  --config.train.compute_dtype=bfloat16
