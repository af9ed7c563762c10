"""Activation constraints: `sharding.activation_rules` makes `nn.with_logical_constraint` constrain, and
constrained embeddings of a batch that does not divide over its mesh axes (2 clips on 8 or 4 batch
shards) equal the unconstrained single-device ones.

The 8-device part runs this file as a script in a subprocess (fake devices must be set before JAX
initialises), as tests/helpers_sharding.py does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from helpers_sharding import TINY_ONE_LAYER

from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.parallel import rules as rules_lib
from audiossl_jax.parallel import sharding as sharding_lib

RESULT_PREFIX = "RESULT "
MESHES = ("8,1,1", "2,2,2")
METHODS = TINY_ONE_LAYER


def _constrained(x):
    return nn.with_logical_constraint(x * 2, ("batch", "embed"))


def test_rules_are_bound_only_inside_and_reach_the_lowering():
    mesh = mesh_lib.make_mesh((1, 1, 1), rules_lib.MESH_AXES, devices=jax.devices()[:1])
    x = jnp.ones((2, 4))
    assert jax.jit(_constrained).lower(x).as_text().count("sharding_constraint") == 0

    def bound(x):
        with sharding_lib.activation_rules(mesh, [["batch", ["data", "fsdp"]], ["embed", "fsdp"]]):
            assert nn.get_logical_axis_rules() == (("batch", ("data", "fsdp")), ("embed", "fsdp"))
            return _constrained(x)

    assert jax.jit(bound).lower(x).as_text().count("sharding_constraint") == 1
    assert nn.get_logical_axis_rules() == ()


@pytest.mark.parametrize("method", list(METHODS))
def test_constrained_embedding_of_an_uneven_batch_matches_one_device(method):
    config, mel, overrides = METHODS[method]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env["XLA_FLAGS"] = " ".join(
        [
            env.get("XLA_FLAGS", ""),
            "--xla_force_host_platform_device_count=8",
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        ]
    ).strip()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), config, str(mel), *overrides],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert proc.returncode == 0 and lines, proc.stderr[-6000:]
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    for mesh in MESHES:
        r = result[mesh]
        assert r["constraints"] > 0, f"{method} on {mesh}: no activation constraint in the embed function"
        assert r["max_abs_diff"] <= 1e-5, f"{method} on {mesh}: embeddings differ by {r['max_abs_diff']:.3g}"


def _main(config_arg: str, mel: int, overrides: list[str]) -> dict:
    """Embeds 2 clips without rules on one device, then with rules bound on each 8-device mesh."""
    import numpy as np
    from helpers_sharding import build_objective, harness_config, synthetic_batch

    config = harness_config(config_arg, overrides)
    objective = build_objective(config)
    host = synthetic_batch(config, 2, mel)
    variables = nn.unbox(objective.init(jax.random.key(0), jax.tree.map(jnp.asarray, host)))
    params, aux = variables["params"], variables.get("aux", {})
    reference = np.asarray(
        jax.jit(lambda p, a, f, v: objective.embed(p, a, f, v)["clip"])(params, aux, host["features"], host["valid"])
    )
    result = {}
    for text in MESHES:
        mesh = mesh_lib.make_mesh(tuple(int(s) for s in text.split(",")), config.mesh.axes)

        def embed(p, a, f, v, mesh=mesh):
            with sharding_lib.activation_rules(mesh, config.rules):
                return objective.embed(p, a, f, v)["clip"]

        with jax.set_mesh(mesh):
            replicated = sharding_lib.replicated(mesh)
            args = jax.device_put((params, aux, host["features"], host["valid"]), replicated)
            lowered = jax.jit(embed).lower(*args)
            clip = np.asarray(lowered.compile()(*args))
        result[text] = {
            "constraints": lowered.as_text().count("sharding_constraint"),
            "max_abs_diff": float(np.max(np.abs(clip - reference))),
        }
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(RESULT_PREFIX + json.dumps(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])), flush=True)
