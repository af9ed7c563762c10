"""tf.data pipelines: batch contents, normalisation, exact resume, host sharding, eval coverage."""

import json
import os

import numpy as np
import pytest

from audiossl_jax.data import pipeline, records

FRAMES = 98  # 1 s demo clips -> 98 fbank frames


def _records(data_dir):
    m = pipeline.load_manifest(data_dir)
    out = []
    for shard in m["shards"]:
        out += records.read_examples(os.path.join(data_dir, shard["file"]), m["mel_bins"])
    return m, out


def _normalised(m, feats):
    return (feats.astype(np.float32) - np.float32(m["mean"])) / np.float32(m["std"])


def _identify(m, examples, batch, frames, mask=None):
    """Index of the example each (unpadded) row holds, matched on its first `frames` frames."""
    ref = np.stack([_normalised(m, e["features"][:frames]) for e in examples])
    rows = range(len(batch["features"])) if mask is None else np.flatnonzero(mask)
    found = []
    for i in rows:
        err = np.abs(ref - batch["features"][i][None, :frames]).max(axis=(1, 2))
        assert err.min() < 1e-4
        found.append(int(err.argmin()))
    return found


def test_manifest_accessors_and_errors(prepared_demo, tmp_path):
    assert pipeline.num_classes(prepared_demo["train"]) == 10
    assert pipeline.mel_bins(prepared_demo["train"]) == 128
    assert pipeline.class_names(prepared_demo["eval"]) == pipeline.class_names(prepared_demo["train"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        pipeline.load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format_version": 1, "spl')
    with pytest.raises(ValueError, match="corrupt"):
        pipeline.load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="lacks"):
        pipeline.load_manifest(str(tmp_path))


def test_train_batches_are_normalised_crops_with_labels(prepared_demo):
    m, examples = _records(prepared_demo["train"])
    it = pipeline.train_iterator(prepared_demo["train"], batch_size=4, crop_frames=40, seed=0)
    batch = next(it)
    assert batch["features"].shape == (4, 40, 128) and batch["features"].dtype == np.float32
    assert batch["valid"].dtype == bool and batch["valid"].all()
    assert batch["labels"].shape == (4, 10) and batch["labels"].dtype == np.float32
    for row, labels in zip(batch["features"], batch["labels"]):
        matches = []
        for ex in examples:
            full = _normalised(m, ex["features"])
            for start in range(FRAMES - 40 + 1):
                if np.allclose(full[start : start + 40], row, atol=1e-5):
                    matches.append(ex)
                    break
        assert len(matches) == 1
        np.testing.assert_array_equal(np.flatnonzero(labels), matches[0]["labels"])


def test_padding_and_valid_mask_when_crop_exceeds_clip(prepared_demo):
    it = pipeline.train_iterator(prepared_demo["train"], batch_size=2, crop_frames=120, seed=0)
    batch = next(it)
    assert batch["valid"][:, :FRAMES].all() and not batch["valid"][:, FRAMES:].any()
    assert np.all(batch["features"][:, FRAMES:] == 0.0)


def test_epoch_covers_each_example_once_and_order_depends_on_seed_and_epoch(prepared_demo):
    m, examples = _records(prepared_demo["train"])
    it = pipeline.train_iterator(prepared_demo["train"], batch_size=4, crop_frames=FRAMES, seed=0)
    assert it.batches_per_epoch == 6
    epochs = [[k for _ in range(6) for k in _identify(m, examples, next(it), FRAMES)] for _ in range(2)]
    for order in epochs:
        assert sorted(order) == list(range(24))
    assert epochs[0] != epochs[1]
    other = pipeline.train_iterator(prepared_demo["train"], batch_size=4, crop_frames=FRAMES, seed=1)
    assert [k for _ in range(6) for k in _identify(m, examples, next(other), FRAMES)] != epochs[0]


@pytest.mark.parametrize("stop", [4, 9])  # mid-epoch, and in the second epoch
def test_exact_resume(prepared_demo, stop):
    kwargs = dict(batch_size=4, crop_frames=30, seed=7)
    reference = pipeline.train_iterator(prepared_demo["train"], **kwargs)
    expected = [next(reference) for _ in range(stop + 5)]
    first = pipeline.train_iterator(prepared_demo["train"], **kwargs)
    for _ in range(stop):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    assert state["batches_consumed"] == stop
    resumed = pipeline.train_iterator(prepared_demo["train"], state=state, **kwargs)
    for want in expected[stop:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match="seed"):
        pipeline.train_iterator(prepared_demo["train"], batch_size=4, crop_frames=30, seed=8, state=state)


@pytest.mark.parametrize("data,count", [("train", 2), ("eval", 3)])  # file vs element sharding
def test_train_hosts_read_disjoint_examples(prepared_demo, data, count):
    m, examples = _records(prepared_demo[data])
    per_host = []
    for index in range(count):
        it = pipeline.train_iterator(
            prepared_demo[data],
            batch_size=2 * count,
            crop_frames=FRAMES,
            seed=0,
            process_index=index,
            process_count=count,
        )
        assert next(it)["features"].shape[0] == 2
        keys = [k for _ in range(it.batches_per_epoch - 1) for k in _identify(m, examples, next(it), FRAMES)]
        per_host.append(set(keys))
        assert len(keys) == len(set(keys))
    for a in range(count):
        for b in range(a + 1, count):
            assert not per_host[a] & per_host[b]


def test_batch_size_must_divide_over_hosts(prepared_demo):
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        pipeline.train_iterator(prepared_demo["train"], batch_size=4, crop_frames=10, seed=0, process_count=3)


def test_eval_every_example_exactly_once_over_two_hosts(prepared_demo):
    m, examples = _records(prepared_demo["eval"])
    seen, num_batches = [], []
    for index in range(2):
        ev = pipeline.eval_iterator(
            prepared_demo["eval"], batch_size=8, crop_frames=64, process_index=index, process_count=2, with_clip_id=True
        )
        batches = list(ev)
        num_batches.append(len(batches))
        assert len(batches) == len(ev)
        for batch in batches:
            assert batch["features"].shape == (4, 64, 128) and batch["_mask"].dtype == bool
            pad = ~batch["_mask"]
            assert not batch["valid"][pad].any() and not batch["features"][pad].any()
            assert all(batch["clip_id"][pad] == b"")
            found = _identify(m, examples, batch, 64, batch["_mask"])
            assert [examples[k]["clip_id"] for k in found] == list(batch["clip_id"][batch["_mask"]])
            seen += found
    assert num_batches == [2, 2]  # 5 real rows per host, local batch 4
    assert sorted(seen) == list(range(10))  # every example exactly once (first 64 frames)


def test_eval_uses_stats_dir_and_pads_short_clips(prepared_demo):
    m_train = pipeline.load_manifest(prepared_demo["train"])
    _, examples = _records(prepared_demo["eval"])
    ev = pipeline.eval_iterator(
        prepared_demo["eval"], batch_size=16, crop_frames=100, stats_dir=prepared_demo["train"], with_clip_id=True
    )
    (batch,) = list(ev)
    assert batch["_mask"].sum() == 10 and batch["valid"][:10, :FRAMES].all()
    assert not batch["valid"][:, FRAMES:].any()
    by_id = {e["clip_id"]: e for e in examples}
    for i in range(10):
        ex = by_id[batch["clip_id"][i]]
        np.testing.assert_allclose(batch["features"][i, :FRAMES], _normalised(m_train, ex["features"]), atol=1e-5)
        np.testing.assert_array_equal(np.flatnonzero(batch["labels"][i]), ex["labels"])


def test_eval_with_more_hosts_than_examples(prepared_demo):
    ids = []
    for index in range(16):
        ev = pipeline.eval_iterator(
            prepared_demo["eval"],
            batch_size=16,
            crop_frames=8,
            process_index=index,
            process_count=16,
            with_clip_id=True,
        )
        (batch,) = list(ev)  # one batch of one row on every host, real or padding
        assert batch["features"].shape == (1, 8, 128)
        ids += list(batch["clip_id"][batch["_mask"]])
    assert len(ids) == 10 and len(set(ids)) == 10


def test_global_and_no_normalisation(prepared_demo):
    """`normalization="global"` (EAT/AST: one AudioSet mean/std for every bin) and `"none"` give
    the stored log-mel shifted/scaled by the given pair; bad settings name the config field."""
    _, examples = _records(prepared_demo["eval"])
    by_id = {e["clip_id"]: e for e in examples}
    for kind, mean, std in [("global", -4.268, 2 * 4.569), ("none", 0.0, 1.0)]:
        ev = pipeline.eval_iterator(
            prepared_demo["eval"],
            batch_size=16,
            crop_frames=FRAMES,
            with_clip_id=True,
            normalization=kind,
            norm_mean=mean,
            norm_std=std,
        )
        (batch,) = list(ev)
        for i in range(10):
            raw = by_id[batch["clip_id"][i]]["features"].astype(np.float32)
            np.testing.assert_allclose(batch["features"][i], (raw - mean) / std, atol=1e-5)
    train = pipeline.train_iterator(
        prepared_demo["train"],
        batch_size=2,
        crop_frames=FRAMES,
        seed=0,
        normalization="global",
        norm_mean=-4.268,
        norm_std=9.138,
    )
    per_bin = pipeline.train_iterator(prepared_demo["train"], batch_size=2, crop_frames=FRAMES, seed=0)
    a, b = next(train)["features"], next(per_bin)["features"]
    assert not np.allclose(a, b)  # same rows, another normalisation
    with pytest.raises(ValueError, match="config.data.normalization"):
        pipeline.eval_iterator(prepared_demo["eval"], batch_size=4, crop_frames=8, normalization="bins")
    m = pipeline.load_manifest(prepared_demo["eval"])
    (own,) = list(
        pipeline.eval_iterator(
            prepared_demo["eval"], batch_size=16, crop_frames=FRAMES, with_clip_id=True, normalization="global"
        )
    )
    for i in range(10):  # no pair given: the manifest's own global mean/std
        raw = by_id[own["clip_id"][i]]["features"].astype(np.float32)
        np.testing.assert_allclose(own["features"][i], (raw - m["global_mean"]) / m["global_std"], atol=1e-4)
    with pytest.raises(ValueError, match="norm_std"):
        pipeline.eval_iterator(
            prepared_demo["eval"], batch_size=4, crop_frames=8, normalization="global", norm_mean=-4.0, norm_std=None
        )


def test_normalization_kwargs_from_config():
    from audiossl_jax.train.config_defaults import base_config

    data = base_config().data
    assert pipeline.normalization_kwargs(data) == {"normalization": "per_bin", "norm_mean": None, "norm_std": None}
    data.update(normalization="global", norm_mean=-4.268, norm_std=9.138)
    assert pipeline.normalization_kwargs(data) == {"normalization": "global", "norm_mean": -4.268, "norm_std": 9.138}
