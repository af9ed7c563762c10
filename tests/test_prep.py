"""`audiossl prep`: every input kind, every bad-input case, determinism, restartability, CLI."""

import argparse
import csv
import json
import os
import struct

import numpy as np
import pytest
import soundfile as sf

from audiossl_jax.data import audio_io, prep, records, sources
from audiossl_jax.data import cli as data_cli
from audiossl_jax.features import frontends

FBANK = frontends.make_frontend("kaldi_fbank")
QUIET = dict(progress=False, log=lambda *_: None)


def _tone(seconds=0.5, rate=16000, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


def _all_examples(data_dir):
    m = json.load(open(os.path.join(data_dir, "manifest.json")))
    out = []
    for shard in m["shards"]:
        out += records.read_examples(os.path.join(data_dir, shard["file"]), m["mel_bins"])
    return m, out


def _shard_bytes(data_dir):
    return {
        n: open(os.path.join(data_dir, n), "rb").read() for n in sorted(os.listdir(data_dir)) if n.endswith(".tfrecord")
    }


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    data_cli.add_prep_parser(sub)
    data_cli.add_demo_data_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_csv_input_examples_match_direct_features(prepared_demo, demo_data_dir):
    m, examples = _all_examples(prepared_demo["train"])
    assert m["num_inputs"] == m["num_examples"] == 24 and m["num_skipped"] == 0 and not m["skipped"]
    assert [s["num_examples"] for s in m["shards"]] == [8, 8, 8]
    assert m["class_names"] == sorted(open(os.path.join(demo_data_dir, "classes.txt")).read().split())
    assert m["frontend"] == FBANK.params and m["mel_bins"] == 128 and m["feature_dtype"] == "float16"
    rows = {r["path"]: r["labels"].split(";") for r in csv.DictReader(open(os.path.join(demo_data_dir, "train.csv")))}
    assert sorted(e["clip_id"].decode() for e in examples) == sorted(rows)
    all_feats = []
    for e in examples:
        clip = e["clip_id"].decode()
        wave, duration = audio_io.load_audio(os.path.join(demo_data_dir, clip))
        np.testing.assert_array_equal(e["features"], FBANK(wave).astype(np.float16))
        assert e["features"].shape == (98, 128) and duration == e["duration"] == 1.0
        assert [m["class_names"][i] for i in e["labels"]] == sorted(rows[clip])
        all_feats.append(e["features"].astype(np.float64))
    x = np.concatenate(all_feats)
    np.testing.assert_allclose(m["mean"], x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m["std"], np.maximum(x.std(0), 1e-5), rtol=1e-6)  # floor: empty filters
    assert m["num_frames"] == x.shape[0]


def test_eval_split_uses_train_class_indices(prepared_demo):
    train = json.load(open(os.path.join(prepared_demo["train"], "manifest.json")))
    m, examples = _all_examples(prepared_demo["eval"])
    assert m["class_names"] == train["class_names"] and m["num_examples"] == 10
    assert [s["file"] for s in m["shards"]] == ["eval-00000-of-00002.tfrecord", "eval-00001-of-00002.tfrecord"]


def test_tsv_and_librosa_frontend_and_pad_crop(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(2.0), 16000)
    sf.write(tmp_path / "short.wav", _tone(0.01), 16000)  # 160 samples < one 25 ms frame
    (tmp_path / "list.tsv").write_text("path\tlabels\nlong.wav\tb;a\nshort.wav\ta\n")
    mel = frontends.make_frontend("librosa_mel")
    out = str(tmp_path / "out")
    m = prep.prepare(
        str(tmp_path / "list.tsv"), out, frontend=mel, max_seconds=1.5, min_seconds=0.5, workers=1, **QUIET
    )
    assert m["num_examples"] == 2 and m["class_names"] == ["a", "b"] and m["mel_bins"] == 64
    ex = {e["clip_id"].decode(): e for e in _all_examples(out)[1]}
    assert ex["long.wav"]["features"].shape == (1 + 24000 // 160, 64)  # cropped to 1.5 s
    assert ex["short.wav"]["features"].shape == (1 + 8000 // 160, 64)  # padded to 0.5 s
    assert list(ex["long.wav"]["labels"]) == [0, 1] and ex["long.wav"]["duration"] == 2.0
    wave, _ = audio_io.load_audio(str(tmp_path / "long.wav"), max_seconds=1.5)
    np.testing.assert_array_equal(ex["long.wav"]["features"], mel(wave).astype(np.float16))


def test_folder_input_unlabelled_and_subdir_labels(tmp_path):
    for rel in ("dogs/a.wav", "cats/b.flac", "c.wav"):
        os.makedirs(os.path.dirname(tmp_path / "in" / rel), exist_ok=True)
        sf.write(tmp_path / "in" / rel, _tone(), 16000)
    (tmp_path / "in" / "readme.txt").write_text("not audio, not an input")
    m = prep.prepare(str(tmp_path / "in"), str(tmp_path / "plain"), frontend=FBANK, workers=1, **QUIET)
    assert m["num_inputs"] == 3 and m["class_names"] == [] and m["source"]["kind"] == "folder"
    m = prep.prepare(
        str(tmp_path / "in"), str(tmp_path / "labelled"), frontend=FBANK, workers=1, folder_labels="subdir", **QUIET
    )
    assert m["class_names"] == ["cats", "dogs"]
    labels = {e["clip_id"].decode(): list(e["labels"]) for e in _all_examples(str(tmp_path / "labelled"))[1]}
    assert labels == {"c.wav": [], "cats/b.flac": [0], "dogs/a.wav": [1]}


def test_audioset_layout(tmp_path):
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0dgw9r,"Human sounds"\n2,/m/07yv9,"Vehicle"\n'
    )
    (tmp_path / "segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=5, num_segs=5, num_unique_labels=3, num_positive_labels=6\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'abc123, 30.000, 40.000, "/m/09x0r,/m/07yv9"\n'
        'def456, 0.000, 10.000, "/m/0dgw9r"\n'
        'ghi789, 10.000, 20.000, "/m/zzzz"\n'
        'jkl000, 0.000, 10.000, "/m/09x0r"\n'
        'abc123, 30.000, 40.000, "/m/09x0r"\n'
    )
    os.makedirs(tmp_path / "audio")
    sf.write(tmp_path / "audio" / "Yabc123_30.000_40.000.wav", _tone(), 16000)
    sf.write(tmp_path / "audio" / "def456.flac", _tone(), 16000)
    sf.write(tmp_path / "audio" / "ghi789.wav", _tone(), 16000)
    assert sources.detect_kind(str(tmp_path / "segments.csv")) == "audioset"
    m = prep.prepare(str(tmp_path / "segments.csv"), str(tmp_path / "out"), frontend=FBANK, workers=1, **QUIET)
    assert m["class_names"] == ["Speech", "Human sounds", "Vehicle"]
    assert m["num_inputs"] == 5 and m["num_examples"] == 2 and m["num_skipped"] == 3
    reasons = {s["reason"].split(" (first")[0]: s["input"] for s in m["skipped"]}
    assert sorted(reasons) == ["audio file not found", "duplicate clip id 'abc123'", "unknown label id(s) ['/m/zzzz']"]
    assert "jkl000" in reasons["audio file not found"] and "ghi789" in reasons["unknown label id(s) ['/m/zzzz']"]
    labels = {e["clip_id"].decode(): list(e["labels"]) for e in _all_examples(str(tmp_path / "out"))[1]}
    assert labels == {"abc123": [0, 2], "def456": [1]}


def _unsupported_wav(path):
    data = b"\x00" * 64
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 0x1234, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + fmt + struct.pack("<4sI", b"data", len(data)) + data
    path.write_bytes(struct.pack("<4sI", b"RIFF", len(body)) + body)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A CSV mixing good files (odd rates, channels and sample formats) with every bad case."""
    d = tmp_path_factory.mktemp("bad")
    sf.write(d / "good.wav", _tone(), 16000)
    sf.write(d / "stereo_44k_float.wav", _tone(rate=44100, channels=2), 44100, subtype="FLOAT")
    sf.write(d / "u8_22k.wav", _tone(rate=22050), 22050, subtype="PCM_U8")
    sf.write(d / "pcm24_48k.flac", _tone(rate=48000), 48000, subtype="PCM_24")
    sf.write(d / "double_11k.wav", _tone(rate=11025), 11025, subtype="DOUBLE")
    good = (d / "good.wav").read_bytes()
    (d / "truncated.wav").write_bytes(good[:30])
    (d / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    (d / "empty.wav").write_bytes(b"")
    sf.write(d / "zero_length.wav", np.zeros(0, np.float32), 16000)
    (d / "text.wav").write_text("this is not audio\n" * 20)
    nan = _tone()
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = _tone()
    inf[5] = np.inf
    sf.write(d / "inf.wav", inf, 16000, subtype="FLOAT")
    sf.write(d / "too_short.wav", _tone(0.005), 16000)
    _unsupported_wav(d / "unsupported_codec.wav")
    expected_skips = {  # file -> words its reason must contain
        "truncated.wav": "audio",
        "garbage.wav": "unreadable",
        "empty.wav": "unreadable",
        "zero_length.wav": "empty",
        "text.wav": "unreadable",
        "nan.wav": "NaN",
        "inf.wav": "inf",
        "too_short.wav": "too short",
        "unsupported_codec.wav": "audio",
        "missing.wav": "not found",
        "unknown_label": "unknown label",
        "duplicate": "duplicate clip id",
    }
    rows = [
        ("good.wav", "a"),
        ("stereo_44k_float.wav", "a;b"),
        ("u8_22k.wav", "b"),
        ("pcm24_48k.flac", ""),
        ("double_11k.wav", "a"),
    ]
    rows += [(name, "a") for name in expected_skips if name.endswith(".wav")]
    rows += [("good.wav", "a")]  # duplicate clip id (same path)
    with open(d / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "clip_id"])
        for path, labels in rows:
            w.writerow([path, labels, ""])
        w.writerow(["good.wav", "nope", "unknown_label_clip"])
    (d / "classes.txt").write_text("a\nb\n")
    return d, expected_skips, len(rows) + 1


def test_bad_inputs_are_skipped_named_and_counted(bad_inputs, tmp_path):
    d, expected, num_rows = bad_inputs
    m = prep.prepare(
        str(d / "list.csv"),
        str(tmp_path / "out"),
        frontend=FBANK,
        workers=1,
        class_names=["a", "b"],
        num_shards=2,
        **QUIET,
    )
    assert m["num_inputs"] == num_rows == m["num_examples"] + m["num_skipped"]
    assert m["num_examples"] == 5
    by_file = {}
    for s in m["skipped"]:
        by_file.setdefault(os.path.basename(s["input"]), []).append(s["reason"])
    assert len(m["skipped"]) == len(expected)
    for name, words in expected.items():
        if name == "unknown_label":
            assert any("unknown label" in r for r in by_file["good.wav"]), by_file
        elif name == "duplicate":
            assert any("duplicate clip id 'good.wav'" in r for r in by_file["good.wav"]), by_file
        else:
            assert len(by_file[name]) == 1 and words.lower() in by_file[name][0].lower(), (name, by_file[name])
    ex = {e["clip_id"].decode(): e for e in _all_examples(str(tmp_path / "out"))[1]}
    assert sorted(ex) == ["double_11k.wav", "good.wav", "pcm24_48k.flac", "stereo_44k_float.wav", "u8_22k.wav"]
    ref = ex["good.wav"]["features"].astype(np.float32)
    strong = ref > ref.max() - 6  # the tone's bins; elsewhere resampler noise dominates
    for name in ("stereo_44k_float.wav", "pcm24_48k.flac", "double_11k.wav"):  # resampled to 16 kHz
        got = ex[name]["features"].astype(np.float32)
        assert got.shape == ref.shape
        gain = np.log(0.75**2) if name.startswith("stereo") else 0.0  # mono = mean of (x, x/2)
        assert np.abs(got - ref - gain)[strong].max() < 0.05, name
    assert list(ex["stereo_44k_float.wav"]["labels"]) == [0, 1]


def test_cli_strict_exit_codes(bad_inputs, tmp_path, capsys):
    d, _, _ = bad_inputs
    base = [
        "prep",
        "--input",
        str(d / "list.csv"),
        "--classes-from",
        str(d / "classes.txt"),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert _run_cli(base + ["--out", str(tmp_path / "lenient")]) == 0
    assert _run_cli(base + ["--out", str(tmp_path / "strict"), "--strict"]) == 1
    printed = capsys.readouterr().out
    assert "5 examples written, 12 skipped" in printed and "--strict" in printed
    (tmp_path / "only_bad.csv").write_text(f"path\n{d / 'text.wav'}\n")
    assert (
        _run_cli(
            [
                "prep",
                "--input",
                str(tmp_path / "only_bad.csv"),
                "--out",
                str(tmp_path / "none"),
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 1
    )


def test_deterministic_across_worker_counts_and_restartable(demo_data_dir, prepared_demo, tmp_path):
    out = str(tmp_path / "train")
    lines = []
    m = prep.prepare(
        os.path.join(demo_data_dir, "train.csv"),
        out,
        frontend=FBANK,
        num_shards=3,
        workers=2,
        progress=False,
        log=lines.append,
    )
    reference = _shard_bytes(prepared_demo["train"])  # written in-process with workers=1
    assert _shard_bytes(out) == reference
    manifest_bytes = open(os.path.join(out, "manifest.json"), "rb").read()
    # Simulate an interrupted run: one shard lost, a half-written temporary file left behind.
    os.remove(os.path.join(out, "train-00001-of-00003.tfrecord"))
    os.remove(os.path.join(out, "train-00001-of-00003.tfrecord.done.json"))
    with open(os.path.join(out, "train-00001-of-00003.tfrecord.tmp-12345"), "wb") as f:
        f.write(reference["train-00001-of-00003.tfrecord"][:1000])
    lines.clear()
    m2 = prep.prepare(
        os.path.join(demo_data_dir, "train.csv"),
        out,
        frontend=FBANK,
        num_shards=3,
        workers=1,
        progress=False,
        log=lines.append,
    )
    assert "2/3 shards already complete" in lines[0]
    assert _shard_bytes(out) == reference and m2 == m
    assert open(os.path.join(out, "manifest.json"), "rb").read() == manifest_bytes
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_interrupted_run_leaves_no_readable_half_shard(demo_data_dir, prepared_demo, tmp_path, monkeypatch):
    out = str(tmp_path / "train")
    real_commit = prep._ShardWriter.commit
    calls = []

    def failing_commit(self, fingerprint):
        calls.append(self.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second shard was being finished
        return real_commit(self, fingerprint)

    monkeypatch.setattr(prep._ShardWriter, "commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(os.path.join(demo_data_dir, "train.csv"), out, frontend=FBANK, num_shards=3, workers=1, **QUIET)
    names = sorted(os.listdir(out))
    assert "manifest.json" not in names
    assert [n for n in names if n.endswith(".tfrecord")] == ["train-00000-of-00003.tfrecord"]
    monkeypatch.setattr(prep._ShardWriter, "commit", real_commit)
    prep.prepare(os.path.join(demo_data_dir, "train.csv"), out, frontend=FBANK, num_shards=3, workers=1, **QUIET)
    assert _shard_bytes(out) == _shard_bytes(prepared_demo["train"])


def test_changed_options_redo_shards(demo_data_dir, tmp_path):
    out = str(tmp_path / "train")
    lines = []
    small = frontends.make_frontend("kaldi_fbank", num_mel_bins=40)
    prep.prepare(
        os.path.join(demo_data_dir, "eval.csv"),
        out,
        frontend=small,
        num_shards=2,
        workers=1,
        progress=False,
        log=lines.append,
    )
    lines.clear()
    m = prep.prepare(
        os.path.join(demo_data_dir, "eval.csv"),
        out,
        frontend=FBANK,
        num_shards=1,
        workers=1,
        progress=False,
        log=lines.append,
    )
    assert not any("already complete" in line for line in lines)
    assert m["mel_bins"] == 128 and len(m["shards"]) == 1
    assert sorted(n for n in os.listdir(out) if "tfrecord" in n) == [
        "train-00000-of-00001.tfrecord",
        "train-00000-of-00001.tfrecord.done.json",
    ]


def test_classes_from_prepared_dir_and_files(prepared_demo, demo_data_dir, tmp_path):
    names = sources.read_class_file(prepared_demo["train"])
    assert names == sorted(sources.read_class_file(os.path.join(demo_data_dir, "classes.txt")))
    with pytest.raises(ValueError, match="manifest.json"):
        sources.read_class_file(str(tmp_path))


def test_numpy_serialization_equals_tensorflow_example():
    import tensorflow as tf

    feats = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float16)
    f = tf.train.Feature
    for labels in ([3, 0, 300], []):
        want = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "features": f(bytes_list=tf.train.BytesList(value=[feats.tobytes()])),
                    "frames": f(int64_list=tf.train.Int64List(value=[7])),
                    "labels": f(int64_list=tf.train.Int64List(value=labels)),
                    "clip_id": f(bytes_list=tf.train.BytesList(value=["ü/b.wav".encode()])),
                    "duration": f(float_list=tf.train.FloatList(value=[10.25])),
                }
            )
        )
        assert tf.train.Example.FromString(records.serialize(feats, labels, "ü/b.wav", 10.25)) == want


def test_tfds_builder_reads_the_shards(prepared_demo):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(prepared_demo["eval"])
    assert builder.info.splits["eval"].num_examples == 10
    ours = {e["clip_id"]: e for e in _all_examples(prepared_demo["eval"])[1]}
    got = list(builder.as_dataset(split="eval").as_numpy_iterator())
    assert len(got) == 10
    for e in got:
        np.testing.assert_array_equal(e["features"], ours[e["clip_id"]]["features"])
        np.testing.assert_array_equal(e["labels"], ours[e["clip_id"]]["labels"])


def test_cli_window_type_reaches_the_frontend(demo_data_dir, tmp_path):
    """`prep --window-type hanning` (EAT/AST's fbank) is recorded in the manifest and changes the
    features; it is refused for the librosa front end."""
    base = ["prep", "--input", os.path.join(demo_data_dir, "eval.csv"), "--workers", "1", "--no-progress"]
    assert _run_cli(base + ["--out", str(tmp_path / "hann"), "--window-type", "hanning"]) == 0
    manifest = json.loads((tmp_path / "hann" / "manifest.json").read_text())
    assert manifest["frontend"]["window_type"] == "hanning"
    with pytest.raises(SystemExit, match="--window-type"):
        _run_cli(base + ["--out", str(tmp_path / "x"), "--frontend", "librosa_mel", "--window-type", "hanning"])
