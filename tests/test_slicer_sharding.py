"""One full SLICER train step (views, k-mix bank, queue, EMA) on 8 fake CPU devices equals the
single-device step, and every param/aux/optimizer array is sharded as its logical axes say."""
import pytest

from helpers_sharding import run_with_fake_devices


@pytest.mark.slow
def test_sharded_train_step_matches_single_device():
    result = run_with_fake_devices(["step", "--config", "configs/slicer.py:tiny", "--meshes", "8,1,1", "2,2,2"])
    for mesh, r in result["meshes"].items():
        assert r["mismatches"] == [], (mesh, r["mismatches"])
        assert r["loss_diff"] < 1e-5 and r["state_max_abs_diff"] < 1e-5, (mesh, r)
        assert all(d < 1e-4 for d in r["metric_diffs"].values()), (mesh, r["metric_diffs"])
    assert result["meshes"]["2,2,2"]["split"] > 0  # params really are split over devices there
