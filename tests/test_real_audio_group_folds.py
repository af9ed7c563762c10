"""tools/real_audio/group_folds: groups from the benchmark's meta CSVs, one probe fit per held-out group."""

import csv
import os

import ml_collections
import numpy as np

from audiossl_jax.evaluate import scoring
from tools.real_audio import group_folds

PROBE = ml_collections.ConfigDict(dict(epochs=60, lr=1e-2, weight_decay=1e-4, batch_size=32))


def _write_meta(root, task, split, rows):
    path = os.path.join(root, "audio", task, f"{split}_meta.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "group", "source", "start"])
        w.writerows(rows)


def test_read_groups_takes_the_first_parts_of_the_group_column(tmp_path):
    _write_meta(tmp_path, "drums", "train", [["train/kick/a.wav", "kick", "csound/kit0", "x", "0"]])
    _write_meta(tmp_path, "drums", "test", [["test/kick/b.wav", "kick", "timgm6mb/kit16", "x", "0"]])
    assert group_folds.read_groups(str(tmp_path), "drums") == {
        "train/kick/a.wav": "csound",
        "test/kick/b.wav": "timgm6mb",
    }
    assert group_folds.read_groups(str(tmp_path), "drums", depth=2)["test/kick/b.wav"] == "timgm6mb/kit16"


def _data(seed=0):
    """Three groups of 40 clips, 2 classes told apart by feature 0; group "c" has the labels swapped."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.array(["a", "b", "c"]), 40)
    cls = np.tile(np.arange(2), 60)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    x[:, 0] += 3.0 * (2 * cls - 1)
    y = np.eye(2, dtype=np.float32)[np.where(groups == "c", 1 - cls, cls)]
    return x, y, groups


def test_each_fold_holds_out_exactly_one_group():
    x, y, groups = _data()
    folds = group_folds.fold_scores(x, y, groups, probe_config=PROBE, seed=0)
    assert list(folds) == ["a", "b", "c"] and all(f["clips"] == 40 for f in folds.values())
    # Fit on a + b, scored on c: c's labels are swapped, so a probe that never saw c gets it all wrong
    # (a fold that leaked c's clips into its training set would not).
    assert folds["c"]["top1"] < 0.1
    assert folds["a"]["top1"] < 0.6 and folds["b"]["top1"] < 0.6  # trained on a conflicting group
    test = groups == "c"
    ref = scoring.score_task(x[~test], y[~test], x[test], y[test], probe_config=PROBE, seed=0, task_type="multiclass")
    assert folds["c"]["top1"] == ref["top1"] and folds["c"]["mAP"] == ref["mAP"]
    assert group_folds.summary(folds)["top1"] == np.mean([f["top1"] for f in folds.values()])


def test_table_lists_every_group_and_the_mean():
    fold = {"top1": 0.5, "mAP": 0.75, "clips": 3}
    report = {
        "encoders": {
            "pre-trained": {"step": 600, "folds": {"a": fold, "b": fold}, "mean": {"top1": 0.5, "mAP": 0.75}},
            "random init": {"step": 0, "folds": {"a": fold, "b": fold}, "mean": {"top1": 0.5, "mAP": 0.75}},
        }
    }
    table = group_folds.format_table(report)
    assert "pre-trained (step 600)" in table and table.count("0.500 / 0.750") == 6


def test_a_family_of_groups_is_held_out_together():
    groups_of = {"a.wav": "csound", "b.wav": "timgm6mb", "c.wav": "opl3", "d.wav": "musescore"}
    merged = group_folds.merge_families(groups_of, ["csound+timgm6mb"])
    assert merged == {"a.wav": "csound+timgm6mb", "b.wav": "csound+timgm6mb", "c.wav": "opl3", "d.wav": "musescore"}
    assert group_folds.merge_families(groups_of, []) == groups_of
    # One fold per family: the probe never trains on a member of the held-out family.
    x, y, groups = _data()
    merged_groups = np.array([{"a": "a", "b": "b+c", "c": "b+c"}[g] for g in groups])
    folds = group_folds.fold_scores(x, y, merged_groups, probe_config=PROBE, seed=0)
    assert list(folds) == ["a", "b+c"] and folds["b+c"]["clips"] == 80


def test_a_family_must_name_known_groups_once():
    groups_of = {"a.wav": "csound", "b.wav": "timgm6mb", "c.wav": "opl3"}
    for bad, msg in [
        (["csound+fluid"], "unknown: fluid"),
        (["csound"], "two or more"),
        (["csound+timgm6mb", "opl3+csound"], "csound is already in --family csound+timgm6mb"),
    ]:
        try:
            group_folds.merge_families(groups_of, bad)
        except SystemExit as e:
            assert msg in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
