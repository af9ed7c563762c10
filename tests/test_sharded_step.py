"""One training step on 1 device == on 8 fake CPU devices in (8,1,1), (2,4,1), (2,2,2) meshes, and every
param / EMA-teacher / Adam-moment array is laid out as the logical rules say.

The 8-device runs happen in a subprocess (tests/helpers_sharding.py): fake devices must be set before
JAX initialises. Each method config's 'tiny' variant runs once per mesh (one init + one step compile),
with one encoder layer to keep compiles short; a config file that does not exist yet is skipped.
"""

from __future__ import annotations

import os

import pytest
from helpers_sharding import REPO, TINY_ONE_LAYER, expected_mesh_axes, run_with_fake_devices

from audiossl_jax.parallel import rules as rules_lib

MESHES = ("8,1,1", "2,4,1", "2,2,2")
METHODS = TINY_ONE_LAYER
TOLERANCE = 1e-5
_RESULTS: dict[str, dict] = {}


def _result(method: str) -> dict:
    config, mel, overrides = METHODS[method]
    path = config.split(":")[0]
    if not os.path.exists(os.path.join(REPO, path)):
        pytest.skip(f"{path} does not exist yet (the {method} config is being written)")
    if method not in _RESULTS:
        args = ["step", "--config", config, "--mel", str(mel), "--meshes", *MESHES]
        if overrides:
            args += ["--override", *overrides]
        _RESULTS[method] = run_with_fake_devices(args)
    return _RESULTS[method]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("method", list(METHODS))
def test_sharded_step_matches_single_device(method, mesh):
    result = _result(method)
    assert result["devices"] == 8
    assert result["reference_metrics"]["update_norm"] > 0, "the step did not change the params"
    r = result["meshes"][mesh]
    assert r["loss_diff"] <= TOLERANCE * max(1.0, abs(result["reference_loss"])), (
        f"{method} loss on mesh {mesh}: {r['loss']} vs {result['reference_loss']} on one device"
    )
    for name in ("grad_norm", "update_norm"):
        ref = result["reference_metrics"][name]
        assert r["metric_diffs"][name] <= TOLERANCE * max(1.0, ref), f"{method} {name} on mesh {mesh}"
    assert r["state_max_abs_diff"] <= TOLERANCE, (
        f"{method} on mesh {mesh}: {r['state_worst_leaf']} differs by {r['state_max_abs_diff']:.3g} from one device"
    )


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("method", list(METHODS))
def test_arrays_are_sharded_as_the_rules_say(method, mesh):
    r = _result(method)["meshes"][mesh]
    assert r["mismatches"] == [], f"{method} on mesh {mesh}: arrays not laid out by the rules: {r['mismatches'][:5]}"
    assert r["checked"] > 0
    if mesh == "8,1,1":  # data parallel: everything replicated
        assert r["split"] == 0
    else:  # fsdp / tensor axes > 1: the embed / mlp / heads / channels params are really split
        assert r["split"] > 0


# nn.with_logical_constraint is a no-op unless flax's logical axis rules (and a mesh) are bound while
# the step is traced: state.make_train_step binds them (sharding.activation_rules). Without them XLA
# guessed the activation layouts (EAT-base on (1,8,1): 24.6 GiB temp per device, bench/memory_report.py).
@pytest.mark.parametrize("method", list(METHODS))
def test_activation_constraints_reach_the_step(method):
    assert _result(method)["meshes"]["2,2,2"]["activation_constraints"] > 0


_D = rules_lib.DEFAULT_RULES


@pytest.mark.parametrize(
    "names, expected, rules",
    [
        (("embed", "mlp"), ("fsdp", "tensor"), _D),
        (("batch", "length", "embed"), (("data", "fsdp"), None, None), _D),  # fsdp already taken by batch
        (("mlp", "embed"), ("tensor", "fsdp"), _D),
        (("kernel", None, None, "channels"), (None, None, None, "tensor"), _D),
        (("heads", "kv", "embed"), ("tensor", None, "fsdp"), _D),
        (("codebook", "classes", "queue", "layers"), (None, None, None, None), _D),
        (("embed", "mlp"), (None, "tensor"), (("embed", None), ("embed", "fsdp"), ("mlp", "tensor"))),
        (("mlp", "heads"), ("tensor", "fsdp"), (("mlp", "tensor"), ("heads", "tensor"), ("heads", "fsdp"))),
    ],
)
def test_reference_resolver_matches_flax(names, expected, rules):
    """The test's own reading of the rules agrees with flax's resolver (priority order, one mesh axis
    per array, a None rule settles a dimension)."""
    import flax.linen as nn

    assert expected_mesh_axes(names, rules) == expected
    flax_axes = tuple(nn.logical_to_mesh_axes(names, rules))
    flax_axes = tuple(a[0] if isinstance(a, tuple) and len(a) == 1 else a for a in flax_axes)
    assert flax_axes == expected
