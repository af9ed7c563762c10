"""`audiossl prep --runner direct`: Beam's DirectRunner with 2 workers writes the bytes the single-machine
prep writes (shards, sidecars, manifest with every skipped input), resumes without rewriting finished
shards, and reads and writes through tf.io.gfile (`ram://`)."""

import argparse
import os
import uuid

import numpy as np
import pytest
import soundfile as sf

from audiossl_jax.data import beam_prep, demo, prep  # needs the [beam] extra (make install)
from audiossl_jax.data import cli as data_cli
from audiossl_jax.features import frontends

FBANK = frontends.make_frontend("kaldi_fbank", num_mel_bins=40)
QUIET = dict(log=lambda *_: None)
SHARDS = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """30 demo clips of 1 s plus bad rows: truncated, garbage, too short, missing, unknown label."""
    d = tmp_path_factory.mktemp("beam_inputs")
    demo.write_demo_data(str(d), num_train=30, num_eval=1, seed=0, seconds=1.0)
    good = (d / "train" / os.listdir(d / "train")[0]).read_bytes()
    (d / "truncated.wav").write_bytes(good[:300])
    (d / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    sf.write(d / "too_short.wav", np.zeros(80, np.float32), 16000)
    (d / "other.wav").write_bytes(good)
    rows = (d / "train.csv").read_text().splitlines()
    rows.insert(5, "truncated.wav,tone")
    rows.insert(12, "garbage.wav,tone")
    rows.insert(20, "too_short.wav,tone")
    rows += ["missing.wav,tone", "other.wav,no_such_class"]
    (d / "list.csv").write_text("\n".join(rows) + "\n")
    (d / "classes.txt").write_text("\n".join(demo.CLASS_NAMES) + "\n")
    return d


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The single-machine prep of list.csv (in process)."""
    out = str(tmp_path_factory.mktemp("single") / "train")
    manifest = prep.prepare(
        str(inputs / "list.csv"),
        out,
        frontend=FBANK,
        class_names=list(demo.CLASS_NAMES),
        num_shards=SHARDS,
        workers=1,
        progress=False,
        **QUIET,
    )
    assert manifest["num_skipped"] == 5 and manifest["num_examples"] == 30
    return out


def _files(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_direct_runner_is_byte_identical_and_resumes_without_rewriting(inputs, reference, tmp_path):
    out = str(tmp_path / "train")
    said = []
    manifest = beam_prep.prepare(
        str(inputs / "list.csv"),
        out,
        frontend=FBANK,
        runner="direct",
        workers=2,
        class_names=list(demo.CLASS_NAMES),
        num_shards=SHARDS,
        log=said.append,
    )
    assert _files(out) == _files(reference)  # shards, sidecars, manifest.json, TFDS metadata
    reasons = sorted(s["reason"].split(" (")[0].split(":")[0] for s in manifest["skipped"])
    assert reasons == [
        "audio file not found",
        "too short",
        "truncated file",
        "unknown label(s) ['no_such_class']",
        "unreadable audio",
    ]
    assert any("on Beam's DirectRunner" in line for line in said)

    # An interrupted run: shard 2 and its sidecar lost, a half-written temporary file left behind.
    lost = "train-00002-of-00004.tfrecord"
    os.remove(os.path.join(out, lost))
    os.remove(os.path.join(out, lost + ".done.json"))
    with open(os.path.join(out, lost + ".tmp-beam-0123"), "wb") as f:
        f.write(b"half a shard")
    kept = {n: os.stat(os.path.join(out, n)) for n in os.listdir(out) if n.endswith(".tfrecord")}
    said.clear()
    beam_prep.prepare(
        str(inputs / "list.csv"),
        out,
        frontend=FBANK,
        runner="direct",
        workers=2,
        class_names=list(demo.CLASS_NAMES),
        num_shards=SHARDS,
        log=said.append,
    )
    assert "prep: 3/4 shards already complete, skipped them" in said
    assert _files(out) == _files(reference)
    for name, before in kept.items():  # the finished shards were not rewritten
        after = os.stat(os.path.join(out, name))
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name


@pytest.fixture
def ram_inputs(inputs, tmp_path, monkeypatch):
    """list.csv and its audio copied to ram:// (TensorFlow's in-memory file system, standing in for gs://)."""
    import tensorflow as tf

    monkeypatch.chdir(tmp_path)  # a ram:// path written with plain open would land here
    root = f"ram://beam-{uuid.uuid4().hex}"
    for dirpath, _, names in os.walk(inputs):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), inputs)
            tf.io.gfile.makedirs(os.path.dirname(f"{root}/in/{rel}"))
            tf.io.gfile.copy(os.path.join(dirpath, name), f"{root}/in/{rel}")
    yield root
    assert not os.path.exists(tmp_path / "ram:"), "a ram:// path was written to the local disk"
    tf.io.gfile.rmtree(root)


def _ram_files(folder):
    import tensorflow as tf

    return {n: tf.io.gfile.GFile(f"{folder}/{n}", "rb").read() for n in sorted(tf.io.gfile.listdir(folder))}


def test_reads_and_writes_through_gfile(ram_inputs, inputs, reference):
    """Beam (2 worker threads: ram:// lives in one process) and the in-process prep, both from ram://
    audio to ram:// shards: the shards equal the local ones; the manifest differs only in paths."""
    import json

    local = _files(reference)
    for name, run in (
        (
            "beam",
            lambda out: beam_prep.prepare(
                f"{ram_inputs}/in/list.csv",
                out,
                frontend=FBANK,
                runner="direct",
                workers=2,
                class_names=list(demo.CLASS_NAMES),
                num_shards=SHARDS,
                **QUIET,
            ),
        ),
        (
            "single",
            lambda out: prep.prepare(
                f"{ram_inputs}/in/list.csv",
                out,
                frontend=FBANK,
                workers=1,
                class_names=list(demo.CLASS_NAMES),
                num_shards=SHARDS,
                progress=False,
                **QUIET,
            ),
        ),
    ):
        out = f"{ram_inputs}/{name}/train"
        run(out)
        remote = _ram_files(out)
        assert sorted(remote) == sorted(local), name
        assert {n: b for n, b in remote.items() if n.endswith(".tfrecord")} == {
            n: b for n, b in local.items() if n.endswith(".tfrecord")
        }, name
        to_local = lambda b: json.loads(b.decode().replace(f"{ram_inputs}/in", str(inputs)))  # noqa: E731
        assert to_local(remote["manifest.json"]) == to_local(local["manifest.json"]), name


def _cli(argv):
    parser = argparse.ArgumentParser()
    data_cli.add_prep_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_dry_run_run_and_option_errors(inputs, reference, tmp_path, capsys, monkeypatch):
    base = [
        "prep",
        "--input",
        str(inputs / "list.csv"),
        "--classes-from",
        str(inputs / "classes.txt"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert (
        _cli(
            base
            + [
                "--dry-run",
                "--shards",
                "4",
                "--runner",
                "dataflow",
                "--",
                "--num_workers=10",
                "--machine_type=n2-standard-4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "33 clips to prepare (2 inputs skipped while listing) -> 4 shards of <= 9 clips" in printed
    # 30 clips of 1 s, too_short.wav (5 ms) and the header of truncated.wav read; garbage.wav does not
    assert "of the 32 readable of 33 sampled headers" in printed
    assert "on 40 CPUs (10 workers x 4 vCPUs (n2-standard-4))" in printed
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="need --runner"):
        _cli(base + ["--", "--num_workers=10"])
    with pytest.raises(SystemExit, match="--strict works without --runner"):
        _cli(base + ["--runner", "direct", "--strict"])
    # The CLI run: Beam options after -- reach the pipeline (one direct worker instead of --workers 2).
    seen, options = [], beam_prep.pipeline_options
    monkeypatch.setattr(
        beam_prep, "pipeline_options", lambda *a: seen.append(options(*a).get_all_options()) or options(*a)
    )
    assert (
        _cli(
            base
            + [
                "--shards",
                str(SHARDS),
                "--num-mel-bins",
                "40",
                "--split",
                "train",
                "--runner",
                "direct",
                "--workers",
                "2",
                "--",
                "--direct_num_workers=1",
            ]
        )
        == 0
    )
    assert _files(tmp_path / "out") == _files(reference)
    assert "on Beam's DirectRunner" in capsys.readouterr().out
    assert [(o["runner"], o["direct_num_workers"], o["direct_running_mode"]) for o in seen] == [
        ("DirectRunner", 1, "multi_processing")
    ]


def test_estimate_lines_for_audioset_scale():
    from audiossl_jax.data import prep_estimate

    lines = prep_estimate.report(2_000_000, 12, 2048, 10.0, 40, "10 workers x 4 vCPUs", 250.0)
    assert lines[0] == (
        "prep dry run: 2000000 clips to prepare (12 inputs skipped while listing) -> 2048 shards of <= 977 clips"
    )
    assert "audio: 5,555.56 h" in lines[1] and ": 22.22 h of CPU time" in lines[2]
    assert "on 40 CPUs (10 workers x 4 vCPUs): 33.3 min of processing" in lines[3]
    assert prep_estimate.cpus_from_beam_args("dataflow", ["--project=p"], 2)[0] is None
    assert prep_estimate.cpus_from_beam_args("direct", [], 2) == (2, "2 local worker processes")
