"""Per-part times of the EAT train step in JAX, to set beside `bench/torch_eat.py --parts`.

    .venv/bin/python bench/eat_parts.py --config configs/eat.py:base --batch 1 --frames 1024 --mel 128 \
        --config.model.depth=4 --config.model.dim=384 --config.model.num_heads=6 \
        --config.model.decoder_dim=384 --config.objective.average_top_k_layers=4
    /path/to/torch-venv/bin/python bench/torch_eat.py --batch 1 --frames 1024 --mel 128 --dim 384 \
        --depth 4 --heads 6 --top-k 4 --decoder-dim 384 --threads 2 --parts

Each part is jitted on its own: the teacher's targets (forward only), the student encoder on the
visible patches of every clone (forward + backward of a sum of squares), the CNN decoder on the full
patch grid of every clone (forward + backward), and the whole loss (forward + backward, no optimizer).
Prints the median wall and process CPU seconds of `--steps` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train_step import synthetic_batch  # noqa: E402

from audiossl_jax.config_loader import load_config, split_overrides  # noqa: E402
from audiossl_jax.objectives import registry as objectives  # noqa: E402
from audiossl_jax.objectives.inverse_block_mask import inverse_block_mask  # noqa: E402


def timed(fn, *args, steps: int) -> tuple[float, float]:
    jax.block_until_ready(fn(*args))
    wall, cpu = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/eat.py:base")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mel", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    args, rest = p.parse_known_args()
    overrides, unknown = split_overrides(rest)  # --config.x=y
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    config = load_config(args.config, overrides)
    if config.method != "eat":
        raise SystemExit(f"--config {args.config}: method {config.method!r}, this benchmark is for eat")
    objective = objectives.build(config)
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(args.batch, args.frames, args.mel).items()}
    features, valid = batch["features"], batch["valid"]
    state = objective.init(jax.random.key(0), batch)
    params, aux = state["params"], state["aux"]
    h, w = objective.encoder.grid(args.frames, args.mel)
    clones = args.batch * objective.clone_batch
    visible, _ = inverse_block_mask(
        jax.random.key(1),
        clones,
        (h, w),
        mask_prob=objective.mask_prob,
        mask_prob_adjust=objective.mask_prob_adjust,
        block=objective.mask_block,
    )

    # inputs are arguments, not closed-over constants, so XLA cannot fold any of the work away
    def student(encoder_params, features, valid, visible, rng):
        out = objective.encoder.apply(
            {"params": encoder_params},
            features,
            valid,
            visible.reshape(args.batch, objective.clone_batch, -1),
            train=True,
            rngs={"dropout": rng},
        )
        return jnp.sum(jnp.square(out["frames"])) + jnp.sum(jnp.square(out["cls"]))

    def decoder(decoder_params, grid):
        return jnp.sum(jnp.square(objective.decoder.apply({"params": decoder_params}, grid)))

    def loss(all_params, aux, batch, rng):
        return objective.loss(all_params, aux, batch, rng, 0)[0]

    grid = jax.random.normal(jax.random.key(3), (clones, h, w, objective.encoder.dim))
    parts = [
        (
            "teacher targets (forward)",
            jax.jit(lambda t, f, v: objective.targets(t, f, v)[0]),
            (aux["teacher"], features, valid),
        ),
        (
            "student forward + backward",
            jax.jit(jax.grad(student)),
            (params["encoder"], features, valid, visible, jax.random.key(2)),
        ),
        ("decoder forward + backward", jax.jit(jax.grad(decoder, argnums=(0, 1))), (params["decoder"], grid)),
        ("whole loss forward + backward", jax.jit(jax.grad(loss)), (params, aux, batch, jax.random.key(4))),
    ]
    print(
        f"{args.config} {' '.join(overrides)}: batch {args.batch} x {args.frames} x {args.mel}, "
        f"{clones} clones of {visible.shape[1]} visible / {h * w} patches"
    )
    print(f"{'part':32s} {'wall s':>8s} {'CPU s':>8s}")
    for name, fn, fn_args in parts:
        wall, cpu = timed(fn, *fn_args, steps=args.steps)
        print(f"{name:32s} {wall:8.3f} {cpu:8.3f}", flush=True)


if __name__ == "__main__":
    main()
