"""`audiossl label-efficiency` (evaluate/label_efficiency.py): stratified, reproducible subsets; the
JSON's fields (results, summary, provenance); the PNG curve."""

import json
import os

import numpy as np
import pytest
from helpers_pretrained import tiny_wav2vec2_run

from audiossl_jax import cli
from audiossl_jax.data import provenance
from audiossl_jax.evaluate import label_efficiency


def test_stratified_subsets_are_reproducible_and_keep_every_class():
    rng = np.random.default_rng(0)
    single = np.eye(5)[np.r_[np.repeat(np.arange(4), 20), [4, 4]]]  # 4 classes x 20 clips, 1 rare class x 2
    for fraction in (0.1, 0.33):
        a = label_efficiency.stratified_subset(single, fraction, seed=0)
        assert np.array_equal(a, label_efficiency.stratified_subset(single, fraction, seed=0))
        assert not np.array_equal(a, label_efficiency.stratified_subset(single, fraction, seed=1))
        assert (single[a].sum(0) > 0).all()  # every class present, the rare one too
        np.testing.assert_array_equal(single[a][:, :4].sum(0), round(fraction * 20))  # proportional
        assert len(np.unique(a)) == len(a)
    np.testing.assert_array_equal(label_efficiency.stratified_subset(single, 1.0, seed=3), np.arange(82))
    multi = (rng.random((60, 8)) < 0.15).astype(np.float32)
    multi[0, 7], multi[:, 7] = 1.0, 0.0  # class 7: one clip only, whose rarest class may be another
    multi[0, 7] = 1.0
    for seed in range(5):
        idx = label_efficiency.stratified_subset(multi, 0.1, seed)
        present = multi.sum(0) > 0
        assert ((multi[idx].sum(0) > 0) == present).all()
        assert len(idx) <= 0.1 * 60 + 9 + 8  # rounding per group + at most one clip per missing class
    with pytest.raises(ValueError, match="fractions"):
        label_efficiency.stratified_subset(single, 0.0, 0)


def test_label_efficiency_cli_writes_json_table_and_png(prepare_demo_splits, tmp_path_factory, tmp_path, capsys):
    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    out = str(tmp_path / "le")
    assert (
        cli.main(
            [
                "label-efficiency",
                "--workdir",
                workdir,
                "--other-workdir",
                workdir,
                "--fractions",
                "0.5,1.0",
                "--seeds",
                "2",
                "--epochs",
                "5",
                "--out",
                out,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "pre-trained (step 2)" in printed and "random-init" in printed and "±" in printed
    report = json.load(open(os.path.join(out, label_efficiency.JSON_FILE)))
    assert os.path.getsize(os.path.join(out, label_efficiency.PNG_FILE)) > 1000
    with open(os.path.join(out, label_efficiency.PNG_FILE), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    names = ["pre-trained (step 2)", "random-init", "run (step 2)"]
    assert [e["name"] for e in report["encoders"]] == names
    assert [e["checkpoint_step"] for e in report["encoders"]] == [2, 0, 2]
    assert report["encoders"][0]["config"]["method"] == "wav2vec2"
    assert report["fractions"] == [0.5, 1.0] and report["seeds"] == 2 and report["probe"]["epochs"] == 5
    assert len(report["results"]) == 3 * 2 * 2
    for r in report["results"]:
        assert 0.0 < r["mAP"] <= 1.0 and r["eval_clips"] == 10 and "per_class_AP" in r
        assert r["train_classes_present"] == report["train_classes"]  # stratified: every class kept
    assert {r["train_clips"] for r in report["results"] if r["fraction"] == 1.0} == {12}
    # the same subsets and probe seeds: the second copy of the run scores exactly like the first
    same = [
        (a["mAP"], b["mAP"])
        for a in report["results"]
        for b in report["results"]
        if a["encoder"] == names[0]
        and b["encoder"] == names[2]
        and (a["fraction"], a["seed"]) == (b["fraction"], b["seed"])
    ]
    assert len(same) == 4 and all(x == pytest.approx(y, abs=1e-6) for x, y in same)
    s = report["summary"]["random-init"]["1.0"]["mAP"]
    values = [r["mAP"] for r in report["results"] if r["encoder"] == "random-init" and r["fraction"] == 1.0]
    assert s["mean"] == pytest.approx(np.mean(values)) and s["std"] == pytest.approx(np.std(values, ddof=1))
    assert set(report["comparison"]["fewest_labels_reaching_it"]) == {names[0], names[2]}
    eval_set = report["eval_set"]
    assert eval_set["clips"] == 10 and len(eval_set["clip_ids_sha256"]) == 64
    assert eval_set["clip_ids_sha256"] == provenance.ids_sha256(provenance.clip_ids(eval_set["dir"]))


def test_label_efficiency_finetune_mode(prepare_demo_splits, tmp_path_factory, tmp_path, capsys):
    """--mode finetune: one fine-tuning per (encoder, fraction, seed) on its subset written as a prepared
    split; fraction 1.0 with seed 0 is exactly `audiossl finetune`; a second call resumes (trains nothing)."""
    from audiossl_jax.data.manifest import load_manifest
    from audiossl_jax.evaluate import finetune

    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    out = str(tmp_path / "le")
    args = ["label-efficiency", "--workdir", workdir, "--mode", "finetune", "--fractions", "0.5,1.0", "--seeds", "1"]
    args += ["--steps", "2", "--out", out]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "mAP of the fine-tuned classifier vs fraction of the train labels" in printed
    report = json.load(open(os.path.join(out, label_efficiency.JSON_FILE)))
    assert report["mode"] == "finetune" and report["metric"] == "mAP" and "probe" not in report
    assert [e["name"] for e in report["encoders"]] == ["pre-trained (step 2)", "random-init"]
    assert [e["finetune"]["steps"] for e in report["encoders"]] == [2, 2]
    rows = report["results"]
    assert [(r["encoder"], r["fraction"]) for r in rows] == [
        ("pre-trained (step 2)", 0.5),
        ("pre-trained (step 2)", 1.0),
        ("random-init", 0.5),
        ("random-init", 1.0),
    ]
    train_dir = report["train_set"]["dir"]
    for r in rows:
        assert r["step"] == 2 and 0.0 < r["mAP"] <= 1.0 and r["eval_clips"] == 10
        assert set(r["per_class_AP"]) <= set(load_manifest(train_dir)["class_names"])
        manifest = load_manifest(r["train_dir"])
        assert manifest["num_examples"] == r["train_clips"]
        assert r["train_classes_present"] == report["train_classes"]
        if r["fraction"] == 1.0:
            assert r["train_dir"] == train_dir and r["train_clips"] == 12
        else:  # the subset of the probe mode, as a prepared split
            assert manifest["subset_of"]["clip_ids_sha256"] == report["train_set"]["clip_ids_sha256"]
            subset_ids = sorted(provenance.clip_ids(r["train_dir"]))
            all_ids = provenance.clip_ids(train_dir)
            from audiossl_jax.data import subset as subset_lib

            _, labels = subset_lib.read_labels(train_dir)
            expected = sorted(all_ids[i] for i in label_efficiency.stratified_subset(labels, 0.5, 0))
            assert subset_ids == expected
    # fraction 1.0, seed 0 of the pre-trained encoder is what `audiossl finetune` gives
    direct = finetune.run(workdir, out=str(tmp_path / "ft"), overrides={"steps": 2})[0]
    assert rows[1]["mAP"] == pytest.approx(direct["mAP"], abs=1e-6)
    assert rows[1]["last_loss"] == pytest.approx(direct["last_loss"], abs=1e-6)
    assert rows[1]["per_class_AP"] == pytest.approx(direct["per_class_AP"], abs=1e-6)
    # the fine-tuning JSON's provenance: checkpoint step, config, split hashes, per-class AP
    assert direct["checkpoint_step"] == 2 and direct["config"]["finetune"]["init_from"] == workdir
    assert np.mean(list(direct["per_class_AP"].values())) == pytest.approx(direct["mAP"], abs=1e-6)
    saved = json.load(open(tmp_path / "ft" / finetune.RESULTS_FILE))
    assert saved["eval_set"] == report["eval_set"] and saved["train_set"] == report["train_set"]
    assert saved["results"][0]["per_class_AP"] == direct["per_class_AP"]
    # the same command again finds every fine-tuning finished: the same results, nothing retrained
    first = {r["workdir"]: os.path.getmtime(os.path.join(r["workdir"], "metrics.jsonl")) for r in rows}
    assert cli.main(args) == 0
    again = json.load(open(os.path.join(out, label_efficiency.JSON_FILE)))
    assert [r["mAP"] for r in again["results"]] == [r["mAP"] for r in rows]
    assert {w: os.path.getmtime(os.path.join(w, "metrics.jsonl")) for w in first} == first
    # too few clips for the batch: a clear error before anything trains
    with pytest.raises(ValueError, match="fewer than the fine-tuning batch of 64"):
        label_efficiency.run(
            workdir,
            mode="finetune",
            fractions=[0.1],
            seeds=1,
            out=str(tmp_path / "small"),
            finetune_overrides={"batch_size": 64},
        )
