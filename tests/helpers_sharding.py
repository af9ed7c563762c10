"""Sharding checks that need fake CPU devices, run in a subprocess by the sharding tests.

Fake devices (`--xla_force_host_platform_device_count`) must be set before JAX initialises, so the
pytest process (which has already initialised JAX with one device) runs this file as a script:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/helpers_sharding.py step \
        --config configs/wav2vec2_conformer.py:tiny --meshes 8,1,1 2,4,1 2,2,2
    XLA_FLAGS=... python tests/helpers_sharding.py reshard --dir /tmp/ckpt --save 4,2,1 --restore 8,1,1 2,2,2

Each command prints one JSON line (prefixed `RESULT `) with the measured differences; the tests
assert on them. `--config toy` is a small in-file objective (dense layers on every logical axis the
rules shard), so the harness is exercised even before the method configs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "RESULT "


def run_with_fake_devices(args: list[str], num_devices: int = 8, timeout: float = 240.0) -> dict:
    """Runs this file in a fresh interpreter with `num_devices` fake CPU devices; returns its RESULT."""
    env = dict(os.environ)
    # Fast compiles (measured ~3x less compile time on the tiny conformer step): the checks compare
    # meshes with each other, not speed.
    env["XLA_FLAGS"] = " ".join(
        [
            env.get("XLA_FLAGS", ""),
            f"--xla_force_host_platform_device_count={num_devices}",
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
            "--xla_cpu_use_fusion_emitters=false",
        ]
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)] + args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"helpers_sharding.py {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


# ---------------------------------------------------------------------------------------------------
# Everything below runs inside the fake-device subprocess.


# Each method's tiny config with one encoder layer (a layer's params are all alike): config, mel bins
# of the synthetic features, overrides.
TINY_ONE_LAYER = {
    "wav2vec2": ("configs/wav2vec2_conformer.py:tiny", 64, ["model.num_layers=1"]),
    "eat": (
        "configs/eat.py:tiny",
        128,
        ["model.depth=1", "objective.average_top_k_layers=1", "model.decoder_layers=1"],
    ),
    "slicer": ("configs/slicer.py:tiny", 64, []),
}


def _toy_config():
    from audiossl_jax.train import config_defaults

    c = config_defaults.base_config()
    c.method = "toy"
    c.model.num_mel_bins = 16
    c.model.embed_dim = 32
    c.model.mlp_dim = 64
    c.model.num_heads = 4
    c.model.head_dim = 8
    c.model.num_classes = 6
    c.data.batch_size = 8
    c.data.crop_frames = 12
    c.optimizer.warmup_steps = 0
    c.optimizer.lr = 1e-2
    c.train.steps = 10
    return c


@dataclass
class ToyObjective:
    """A small objective whose params cover the sharded logical axes (embed, mlp, heads, channels)
    and whose aux is an EMA of the params (like a teacher), with dropout so the rng matters."""

    num_mel_bins: int
    embed_dim: int
    mlp_dim: int
    num_heads: int
    head_dim: int
    num_classes: int
    name: str = "toy"

    def _module(self):
        import math

        import flax.linen as nn
        import jax.numpy as jnp

        part = nn.with_logical_partitioning
        init = nn.initializers.lecun_normal()
        objective = self

        def flat_init(in_axes: int):
            """`init` on the kernel flattened to [fan_in, fan_out], reshaped back (as DenseGeneral does)."""

            def fn(key, shape, dtype=jnp.float32):
                fan_in = math.prod(shape[:in_axes])
                return init(key, (fan_in, math.prod(shape) // fan_in), dtype).reshape(shape)

            return fn

        class Toy(nn.Module):
            @nn.compact
            def __call__(self, x, valid, train: bool):
                x = nn.Dense(
                    objective.embed_dim,
                    kernel_init=part(init, ("mel", "embed")),
                    bias_init=part(nn.initializers.zeros, ("embed",)),
                )(x)
                x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
                # Multi-axis kernels as explicit params (not nn.DenseGeneral, whose flat-then-reshape
                # init breaks under logical axis rules: flax issue #3676).
                heads = (objective.num_heads, objective.head_dim)
                wq = self.param("query", part(flat_init(1), ("embed", "heads", "kv")), (x.shape[-1], *heads))
                q = jnp.einsum("bte,ehd->bthd", x, wq)
                att = jnp.einsum("bthd,bshd->bhts", q, q) / jnp.sqrt(objective.head_dim)
                att = jnp.where(valid[:, None, None, :], att, -1e9)
                ctx = jnp.einsum("bhts,bshd->bthd", nn.softmax(att, axis=-1), q)
                wo = self.param("out", part(flat_init(2), ("heads", "kv", "embed")), (*heads, objective.embed_dim))
                x = x + jnp.einsum("bthd,hde->bte", ctx, wo)
                h = nn.Dense(objective.mlp_dim, kernel_init=part(init, ("embed", "mlp")))(
                    nn.LayerNorm(
                        scale_init=part(nn.initializers.ones, ("embed",)),
                        bias_init=part(nn.initializers.zeros, ("embed",)),
                    )(x)
                )
                h = nn.with_logical_constraint(nn.gelu(h), ("batch", "length", "mlp"))
                h = nn.Dropout(0.1, deterministic=not train)(h)
                x = x + nn.Dense(objective.embed_dim, kernel_init=part(init, ("mlp", "embed")))(h)
                conv = nn.Conv(objective.mlp_dim, (3,), kernel_init=part(init, ("kernel", "embed", "channels")))(x)
                frames = x + nn.Dense(objective.embed_dim, kernel_init=part(init, ("channels", "embed")))(conv)
                w = valid[..., None].astype(frames.dtype)
                clip = (frames * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
                logits = nn.Dense(objective.num_classes, kernel_init=part(init, ("embed", "classes")))(clip)
                return {"frames": frames, "clip": clip, "logits": logits}

        return Toy()

    def init(self, rng, batch):
        import jax

        params = self._module().init(rng, batch["features"], batch["valid"], train=False)["params"]
        return {"params": params, "aux": {"ema": jax.tree.map(lambda p: p, params)}}

    def loss(self, params, aux, batch, rng, step):
        import jax.numpy as jnp
        import optax

        out = self._module().apply(
            {"params": params}, batch["features"], batch["valid"], train=True, rngs={"dropout": rng}
        )
        bce = optax.sigmoid_binary_cross_entropy(out["logits"], batch["labels"]).mean()
        smooth = jnp.mean(jnp.square(out["frames"][:, 1:] - out["frames"][:, :-1]))
        loss = bce + 0.01 * smooth
        return loss, ({"bce": bce, "_carry": None}, aux)

    def update_aux(self, params, aux, carry, step):
        import jax

        return {"ema": jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, aux["ema"], params)}

    def embed(self, params, aux, features, valid):
        out = self._module().apply({"params": params}, features, valid, train=False)
        return {"frames": out["frames"], "clip": out["clip"]}


def harness_config(spec: str, overrides: list[str] | None = None):
    """`toy` or `path/to/config.py[:variant]` (relative to the repo) with `a.b=value` overrides ->
    ConfigDict: the repo's one loader (`audiossl_jax.config_loader`), or the in-file toy config."""
    from audiossl_jax import config_loader

    if spec == "toy":
        return config_loader.apply_overrides(_toy_config(), overrides or [])
    return config_loader.load_config(os.path.join(REPO, spec), overrides or [])


def build_objective(config):
    if config.method == "toy":
        m = config.model
        return ToyObjective(m.num_mel_bins, m.embed_dim, m.mlp_dim, m.num_heads, m.head_dim, m.num_classes)
    from audiossl_jax.objectives import registry

    return registry.build(config)


def _first_field(config, candidates: tuple[str, ...]) -> int | None:
    """The value of the first dotted field of `candidates` the config has, else None."""
    for dotted in candidates:
        node = config
        try:
            for part in dotted.split("."):
                node = node[part]
        except (KeyError, AttributeError):
            continue
        return int(node)
    return None


def synthetic_batch(config, batch_size: int, mel: int | None = None, seed: int = 0) -> dict:
    """Host batch shaped like the pipeline's: features [B, T, mel], valid [B, T] (later rows padded
    at the end, up to 44%), labels [B, C] multi-hot.

    `mel`: the feature width (configs that take it from the prepared data do not name it)."""
    import numpy as np

    mel = mel or _first_field(config, ("model.num_mel_bins", "data.num_mel_bins"))
    if mel is None:
        raise KeyError("the config names no model.num_mel_bins / data.num_mel_bins: pass --mel")
    classes = _first_field(config, ("model.num_classes", "data.num_classes")) or 5
    frames = int(config.data.crop_frames)
    rs = np.random.RandomState(seed)
    valid = np.ones((batch_size, frames), bool)
    for i in range(batch_size):
        valid[i, frames - (i * frames) // (2 * batch_size) :] = False
    features = rs.randn(batch_size, frames, mel).astype(np.float32) * valid[..., None]
    labels = (rs.rand(batch_size, classes) < 0.3).astype(np.float32)
    return {"features": features, "valid": valid, "labels": labels}


def expected_mesh_axes(names: tuple, rules) -> tuple:
    """Reference resolver for logical names -> mesh axes, written from the rules' documented meaning:
    rules are in priority order; a dimension takes the first rule naming it whose mesh axes are
    not already used by another dimension of the same array; otherwise it is replicated (None)."""
    result: list[Any] = [None] * len(names)
    assigned: set[int] = set()
    used: set[str] = set()
    for logical, mesh_axes in rules:
        if logical not in names or names.index(logical) in assigned:
            continue
        pos = names.index(logical)
        axes = () if mesh_axes is None else ((mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
        if used.intersection(axes):
            continue
        assigned.add(pos)  # a rule mapping to None also settles the dimension (replicated)
        result[pos] = None if not axes else (axes[0] if len(axes) == 1 else axes)
        used.update(axes)
    return tuple(result)


def _normalise_spec(spec, ndim: int) -> tuple:
    out = []
    for entry in tuple(spec) + (None,) * (ndim - len(tuple(spec))):
        if isinstance(entry, (tuple, list)):
            entry = tuple(entry)
            entry = entry[0] if len(entry) == 1 else (entry or None)
        out.append(entry)
    return tuple(out)


def _path_name(path) -> str:
    import jax

    return jax.tree_util.keystr(path)


def check_shardings(state, boxed, mesh, rules) -> dict:
    """Compares every param / aux / optimizer-moment array's sharding with the rules.

    Returns the number of arrays checked, how many are split over more than one device, and a list
    of mismatches (path, expected, actual, shard shape)."""
    import math

    import flax.linen as nn
    import jax

    mismatches, checked, split = [], 0, 0
    expected_by_path: dict[str, tuple] = {}

    def visit(prefix, boxed_tree, actual_tree):
        boxed_leaves = jax.tree_util.tree_flatten_with_path(
            boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
        )[0]
        actual_leaves = jax.tree_util.tree_leaves(actual_tree)
        assert len(boxed_leaves) == len(actual_leaves), (prefix, len(boxed_leaves), len(actual_leaves))
        for (path, box), arr in zip(boxed_leaves, actual_leaves):
            names = tuple(box.names) if isinstance(box, nn.LogicallyPartitioned) else (None,) * arr.ndim
            expected = expected_mesh_axes(names, rules)
            name = prefix + _path_name(path)
            expected_by_path[name] = expected
            _compare(name, expected, arr, names)

    def _compare(name, expected, arr, names):
        nonlocal checked, split
        actual = _normalise_spec(arr.sharding.spec, arr.ndim)
        shard_shape = arr.addressable_shards[0].data.shape
        want_shape = tuple(
            math.ceil(dim / math.prod(mesh.shape[a] for a in ((ax,) if isinstance(ax, str) else ax)))
            if ax is not None
            else dim
            for dim, ax in zip(arr.shape, expected)
        )
        checked += 1
        split += int(shard_shape != arr.shape)
        if actual != expected or tuple(shard_shape) != want_shape:
            mismatches.append(
                {
                    "path": name,
                    "names": list(names),
                    "expected": str(expected),
                    "actual": str(actual),
                    "shape": list(arr.shape),
                    "shard_shape": list(shard_shape),
                }
            )

    visit("params", boxed["params"], state["params"])
    visit("aux", boxed["aux"], state["aux"])
    # Adam's moments must follow their params' shardings.
    param_paths = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["params"])[0]]
    for path, arr in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]:
        key = _path_name(path)
        owner = [p for p in param_paths if key.endswith(p)]
        if owner and arr.ndim > 0:
            owner_path = "params" + max(owner, key=len)
            _compare("opt_state" + key, expected_by_path[owner_path], arr, ("moment of " + owner_path,))
    return {"checked": checked, "split": split, "mismatches": mismatches}


def _parse_mesh(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def one_step(config, objective, mesh, host_batch, seed: int):
    """Sharded init + one jitted train step on `mesh`: (state, metrics, boxed abstract init, shardings,
    the lowered step's text)."""
    import jax

    from audiossl_jax.parallel import sharding as sharding_lib
    from audiossl_jax.train import optimizer
    from audiossl_jax.train import step as step_lib

    tx, schedule = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    batch = sharding_lib.global_batch(host_batch, sharding_lib.batch_sharding(mesh, config.rules))
    init_rng, step_rng = jax.random.split(jax.random.key(seed))
    with jax.set_mesh(mesh):
        state, shardings = step_lib.init_train_state(objective, tx, init_rng, batch, mesh, config.rules)
        boxed = jax.eval_shape(objective.init, init_rng, batch)
        train_step = step_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=config.rules)
        step = step_lib.jit_train_step(train_step, shardings, jax.tree.map(lambda x: x.sharding, batch), mesh)
        lowered = step.lower(state, batch, step_rng)
        # Activation constraints (nn.with_logical_constraint) that reached the step: 0 when no
        # logical axis rules were bound while it was traced.
        hlo = lowered.as_text()
        constraints = hlo.count("sharding_constraint")
        state, metrics = lowered.compile()(state, batch, step_rng)
        jax.block_until_ready(state)
    metrics = dict(jax.device_get(metrics), _activation_constraints=constraints)
    return state, metrics, boxed, shardings, hlo


def cmd_step(args) -> dict:
    """One step on 1 device and on each mesh of 8 devices: loss/state differences + sharding check."""
    import jax
    import numpy as np

    from audiossl_jax.parallel import mesh as mesh_lib

    config = harness_config(args.config, args.override)
    # No warm-up: the first step must move the params (a warm-up schedule starts at lr 0).
    config.optimizer.warmup_steps = 0
    # Adam's first update is lr * g / (|g| + eps): a parameter whose true gradient is 0 (a conv bias in
    # front of BatchNorm: its gradient is round-off, ~1e-7, and differs between meshes) would move by
    # a sizeable fraction of lr in a random direction. eps = 1e-3 damps such round-off below 1e-6
    # while real gradients (|g| >> 1e-3) still take ~lr steps; the grad norm is compared as well.
    config.optimizer.eps = max(float(config.optimizer.eps), 1e-3)
    objective = build_objective(config)
    n = len(jax.devices())
    batch_size = int(config.data.batch_size)
    if batch_size % n:
        batch_size = n * max(1, batch_size // n)
    host_batch = synthetic_batch(config, batch_size, args.mel)

    ref_mesh = mesh_lib.make_mesh((1, 1, 1), config.mesh.axes, devices=jax.devices()[:1])
    ref_state, ref_metrics, _, _, _ = one_step(config, objective, ref_mesh, host_batch, args.seed)
    ref_leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(ref_state))[0]
    result = {
        "config": args.config,
        "batch_size": batch_size,
        "devices": n,
        "reference_loss": float(ref_metrics["loss"]),
        "reference_metrics": {k: float(v) for k, v in ref_metrics.items()},
        "meshes": {},
    }
    for text in args.meshes:
        shape = _parse_mesh(text)
        mesh = mesh_lib.make_mesh(shape, config.mesh.axes)
        state, metrics, boxed, _, _ = one_step(config, objective, mesh, host_batch, args.seed)
        sharding_report = check_shardings(state, boxed, mesh, config.rules)
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
        worst_path, worst = "", 0.0
        for (path, ref), (_, val) in zip(ref_leaves, leaves):
            diff = float(np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(val, np.float64)), initial=0.0))
            if diff > worst:
                worst_path, worst = _path_name(path), diff
        result["meshes"][text] = {
            "loss": float(metrics["loss"]),
            "loss_diff": abs(float(metrics["loss"]) - result["reference_loss"]),
            "metric_diffs": {
                k: abs(float(metrics[k]) - float(ref_metrics[k])) for k in ref_metrics if not k.startswith("_")
            },
            "activation_constraints": metrics["_activation_constraints"],
            "state_max_abs_diff": worst,
            "state_worst_leaf": worst_path,
            "num_leaves": len(leaves),
            **sharding_report,
        }
    return result


def cmd_reshard(args) -> dict:
    """Saves a trained-one-step state on one mesh, restores it on others: values and shardings."""
    import jax
    import numpy as np

    from audiossl_jax.parallel import mesh as mesh_lib
    from audiossl_jax.parallel import sharding as sharding_lib
    from audiossl_jax.train import checkpointing, optimizer
    from audiossl_jax.train import step as step_lib

    config = harness_config(args.config, args.override)
    objective = build_objective(config)
    host_batch = synthetic_batch(config, int(config.data.batch_size), args.mel)
    save_mesh = mesh_lib.make_mesh(_parse_mesh(args.save), config.mesh.axes)
    saved, _, _, saved_shardings, _ = one_step(config, objective, save_mesh, host_batch, args.seed)
    saved_host = jax.device_get(saved)
    data_state = {"epoch": 3, "position": 17, "files": ["split-00000-of-00002.tfrecord"]}
    ckpt = checkpointing.Checkpointer(args.dir, keep=2)
    ckpt.save(1, saved, data_state, force=True)
    ckpt.close()

    result = {"saved_mesh": args.save, "restored": {}}
    tx, _ = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    for text in args.restore:
        mesh = mesh_lib.make_mesh(_parse_mesh(text), config.mesh.axes)
        batch = sharding_lib.global_batch(host_batch, sharding_lib.batch_sharding(mesh, config.rules))
        with jax.set_mesh(mesh):
            # A fresh state on the new mesh gives the target structure and shardings (as on resume).
            fresh, shardings = step_lib.init_train_state(
                objective, tx, jax.random.key(args.seed + 1), batch, mesh, config.rules
            )
            reader = checkpointing.Checkpointer(args.dir, keep=2)
            latest = reader.latest_step()
            restored, restored_data = reader.restore(latest, fresh, shardings)
            reader.close()
        restored_host = jax.device_get(restored)
        diffs = jax.tree.leaves(
            jax.tree.map(
                lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0)),
                saved_host,
                restored_host,
            )
        )
        sharding_ok = all(
            r.sharding.is_equivalent_to(s, r.ndim)
            for r, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings))
        )
        on_new_mesh = all(set(r.sharding.device_set) == set(mesh.devices.flat) for r in jax.tree.leaves(restored))
        changed = any(
            not r.sharding.is_equivalent_to(s, r.ndim)
            for r, s in zip(jax.tree.leaves(restored), jax.tree.leaves(saved_shardings))
        )
        fresh_differs = any(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0)) > 0
            for a, b in zip(jax.tree.leaves(jax.device_get(fresh)), jax.tree.leaves(saved_host))
        )
        result["restored"][text] = {
            "latest_step": latest,
            "max_abs_diff": max(diffs),
            "num_leaves": len(diffs),
            "shardings_match_target": sharding_ok,
            "on_new_mesh": on_new_mesh,
            "layout_changed": changed,
            "fresh_init_differs": fresh_differs,
            "data_state_equal": restored_data == data_state,
        }
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step")
    step.add_argument("--config", default="toy")
    step.add_argument("--meshes", nargs="+", default=["8,1,1", "2,4,1", "2,2,2"])
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--override", nargs="*", default=[], help="config overrides a.b=value")
    step.add_argument("--mel", type=int, help="mel bins of the synthetic features (default: config.model.num_mel_bins)")
    step.set_defaults(func=cmd_step)
    reshard = sub.add_parser("reshard")
    reshard.add_argument("--config", default="toy")
    reshard.add_argument("--dir", required=True)
    reshard.add_argument("--save", default="4,2,1")
    reshard.add_argument("--restore", nargs="+", default=["8,1,1", "2,2,2"])
    reshard.add_argument("--seed", type=int, default=0)
    reshard.add_argument("--override", nargs="*", default=[], help="config overrides a.b=value")
    reshard.add_argument("--mel", type=int, help="mel bins of the synthetic features")
    reshard.set_defaults(func=cmd_reshard)
    args = parser.parse_args(argv)
    result = args.func(args)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
