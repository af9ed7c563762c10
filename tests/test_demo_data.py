"""The built-in demo data generator: determinism, layout, labels."""

import csv
import os

import numpy as np
import soundfile as sf

from audiossl_jax.data import demo


def test_clips_are_pure_functions_of_seed_split_index():
    a, labels_a = demo.make_clip(3, "train", 7, seconds=0.5)
    b, labels_b = demo.make_clip(3, "train", 7, seconds=0.5)
    np.testing.assert_array_equal(a, b)
    assert labels_a == labels_b
    assert not np.array_equal(a, demo.make_clip(4, "train", 7, seconds=0.5)[0])
    assert not np.array_equal(a, demo.make_clip(3, "eval", 7, seconds=0.5)[0])
    assert a.dtype == np.float32 and a.shape == (8000,)
    assert np.max(np.abs(a)) <= 0.9 + 1e-6


def test_every_class_generator_gives_audible_events():
    rng = np.random.default_rng(0)
    for name, make in demo.CLASSES.items():
        event = make(rng)
        assert event.ndim == 1 and 0 < event.size <= 2 * demo.SAMPLE_RATE, name
        assert np.all(np.isfinite(event)) and np.sqrt(np.mean(event**2)) > 1e-3, name


def test_layout_csv_and_labels(demo_data_dir):
    with open(os.path.join(demo_data_dir, "classes.txt")) as f:
        classes = f.read().split()
    assert classes == list(demo.CLASS_NAMES) and len(classes) == 10
    for split, count in (("train", 24), ("eval", 10)):
        with open(os.path.join(demo_data_dir, f"{split}.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count and list(rows[0]) == ["path", "labels"]
        seen = set()
        for row in rows:
            labels = row["labels"].split(";")
            assert 1 <= len(labels) <= 3 and len(set(labels)) == len(labels)
            assert set(labels) <= set(classes)
            seen |= set(labels)
            audio, rate = sf.read(os.path.join(demo_data_dir, row["path"]), dtype="float32")
            assert rate == 16000 and audio.shape == (16000,)
        assert seen == set(classes), split  # every class occurs in every split


def test_rewrite_is_byte_identical(demo_data_dir, tmp_path):
    demo.write_demo_data(str(tmp_path), num_train=3, num_eval=0, seed=0, seconds=1.0)
    for i in range(3):
        name = f"train/train_{i:06d}.wav"
        with open(tmp_path / name, "rb") as f, open(os.path.join(demo_data_dir, name), "rb") as g:
            assert f.read() == g.read()
