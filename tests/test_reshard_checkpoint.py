"""A train state checkpointed on one mesh restores onto other meshes (orbax reshards) with equal values.

Runs in a subprocess with 8 fake CPU devices (tests/helpers_sharding.py `reshard`): the state of the
helper's small objective (params on every sharded logical axis, an EMA aux tree, Adam moments) after
one step on a (4,2,1) mesh is saved with audiossl_jax.train.checkpointing.Checkpointer, then restored
onto (8,1,1) and (2,2,2) meshes into the shardings a fresh run on those meshes would use.
"""

from __future__ import annotations

import pytest
from helpers_sharding import run_with_fake_devices

RESTORE = ("8,1,1", "2,2,2")


@pytest.fixture(scope="module")
def reshard_result(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reshard") / "checkpoints"
    return run_with_fake_devices(["reshard", "--dir", str(directory), "--save", "4,2,1", "--restore", *RESTORE])


@pytest.mark.parametrize("mesh", RESTORE)
def test_checkpoint_from_4x2_restores_on(mesh, reshard_result):
    r = reshard_result["restored"][mesh]
    assert r["latest_step"] == 1
    assert r["fresh_init_differs"], "the restore target must start from different values, or equality proves nothing"
    assert r["max_abs_diff"] == 0.0, f"values changed when restoring onto {mesh}"
    assert r["num_leaves"] > 10
    assert r["shardings_match_target"], f"restored arrays do not have the {mesh} mesh's shardings"
    assert r["on_new_mesh"]
    assert r["layout_changed"], "the target layout should differ from the saved one"
    assert r["data_state_equal"], "the data-iterator position did not round-trip"
