"""Reliability of `audiossl prep` (issue 12): truncated files, --strict writes nothing, workers die with
the parent, unused CSV columns are named, a rerun over complete shards says so."""

import csv
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from audiossl_jax import cli
from audiossl_jax.data import audio_io, prep
from audiossl_jax.features import frontends

FBANK = frontends.make_frontend("kaldi_fbank")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tone(seconds=2.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture
def inputs(tmp_path):
    """good.wav (2 s, 64,044 bytes) and truncated.wav (its first 1,000 bytes), listed in list.csv."""
    sf.write(tmp_path / "good.wav", _tone(), 16000, subtype="PCM_16")
    data = (tmp_path / "good.wav").read_bytes()
    assert len(data) == 64044
    (tmp_path / "truncated.wav").write_bytes(data[:1000])
    (tmp_path / "list.csv").write_text("path,labels\ngood.wav,a\ntruncated.wav,a\n")
    return tmp_path


def test_truncated_wav_is_skipped_with_its_reason(inputs, tmp_path):
    with pytest.raises(audio_io.BadAudio, match="truncated file: the WAV header declares 64000 bytes"):
        audio_io.load_audio(str(inputs / "truncated.wav"))
    said = []
    m = prep.prepare(
        str(inputs / "list.csv"), str(tmp_path / "out"), frontend=FBANK, workers=1, progress=False, log=said.append
    )
    assert m["num_examples"] == 1 and m["num_skipped"] == 1
    assert m["skipped"][0]["input"].endswith("truncated.wav") and "truncated" in m["skipped"][0]["reason"]
    assert any("truncated" in line for line in said)
    wave, duration = audio_io.load_audio(str(inputs / "good.wav"))  # a complete file still reads whole
    assert wave.shape == (32000,) and duration == 2.0


def _written(out):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(str(out), "*")))


def test_strict_exits_1_before_writing_anything(inputs, tmp_path, capsys):
    out = tmp_path / "strict"
    base = ["prep", "--input", str(inputs / "list.csv"), "--workers", "1", "--no-progress", "--strict"]
    assert cli.main(base + ["--out", str(out)]) == 1  # a decode failure (the truncated wav)
    printed = capsys.readouterr().out
    assert "--strict" in printed and "truncated.wav" in printed and "no shard or manifest was written" in printed
    assert _written(out) == []  # no shard, no sidecar, no temporary file, no manifest
    (inputs / "missing.csv").write_text("path,labels\ngood.wav,a\nnot_there.wav,a\n")
    out2 = tmp_path / "strict2"
    assert (
        cli.main(
            [
                "prep",
                "--input",
                str(inputs / "missing.csv"),
                "--out",
                str(out2),
                "--workers",
                "1",
                "--no-progress",
                "--strict",
            ]
        )
        == 1
    )  # a listing failure: not even the folder
    assert "not_there.wav" in capsys.readouterr().out and not out2.exists()
    (inputs / "only_good.csv").write_text("path,labels\ngood.wav,a\n")
    assert (
        cli.main(
            [
                "prep",
                "--input",
                str(inputs / "only_good.csv"),
                "--out",
                str(tmp_path / "ok"),
                "--workers",
                "1",
                "--no-progress",
                "--strict",
            ]
        )
        == 0
    )
    assert "manifest.json" in _written(tmp_path / "ok")


def test_strict_keeps_complete_shards_of_an_earlier_run(inputs, tmp_path):
    out = str(tmp_path / "out")
    (inputs / "two.csv").write_text("path,labels\ngood.wav,a\ngood.wav,b\n".replace("good.wav,b", "g2.wav,b"))
    sf.write(inputs / "g2.wav", _tone(1.0), 16000)
    prep.prepare(
        str(inputs / "two.csv"), out, frontend=FBANK, workers=1, num_shards=2, progress=False, log=lambda *a: None
    )
    before = {p: open(os.path.join(out, p), "rb").read() for p in _written(out)}
    (inputs / "g2.wav").write_bytes((inputs / "g2.wav").read_bytes()[:500])  # shard 1's input changes
    with pytest.raises(prep.StrictError, match="g2.wav"):
        prep.prepare(
            str(inputs / "two.csv"),
            out,
            frontend=FBANK,
            workers=1,
            num_shards=2,
            progress=False,
            log=lambda *a: None,
            strict=True,
        )
    assert {p: open(os.path.join(out, p), "rb").read() for p in _written(out)} == before  # nothing touched


def test_unused_label_column_is_named_and_labels_suggested(inputs, tmp_path):
    with open(inputs / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerow(["good.wav", "dog", "train"])
    said = []
    m = prep.prepare(
        str(inputs / "label.csv"), str(tmp_path / "out"), frontend=FBANK, workers=1, progress=False, log=said.append
    )
    assert m["num_classes"] == 0
    notes = [line for line in said if "not used" in line]
    assert len(notes) == 1 and "'label'" in notes[0] and "'split'" in notes[0] and "'labels'" in notes[0], said
    said.clear()
    prep.prepare(
        str(inputs / "list.csv"), str(tmp_path / "out2"), frontend=FBANK, workers=1, progress=False, log=said.append
    )
    assert not [line for line in said if "not used" in line]  # path,labels: nothing to say


def test_rerun_over_complete_shards_says_nothing_was_written(inputs, tmp_path):
    out = str(tmp_path / "out")
    first, second = [], []
    prep.prepare(str(inputs / "list.csv"), out, frontend=FBANK, workers=1, progress=False, log=first.append)
    assert any("examples written" in line for line in first)
    prep.prepare(str(inputs / "list.csv"), out, frontend=FBANK, workers=1, progress=False, log=second.append)
    assert not any("examples written" in line for line in second), second
    assert any("already complete; nothing new written" in line for line in second), second


def _children(pid):
    """Pool workers (multiprocessing spawn) whose parent is `pid` and that are not zombies."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            cmdline = open(stat[:-4] + "cmdline", "rb").read()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(stat.split("/")[2]))
    return found


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_die_with_a_killed_parent(tmp_path):
    from audiossl_jax.data import demo

    # 30 s clips, 8 per task: a worker is busy for seconds, so only the death signal stops it at once
    paths = demo.write_demo_data(str(tmp_path / "audio"), num_train=32, num_eval=1, seed=0, seconds=30.0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "audiossl_jax.cli",
            "prep",
            "--input",
            paths["train"],
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "2",
            "--no-progress",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    workers = []
    while len(workers) < 2:
        assert proc.poll() is None and time.time() < deadline, "no 2 workers seen"
        time.sleep(0.05)
        workers = _children(proc.pid)
    time.sleep(1.0)  # the workers are past their initializer and busy
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while any(_alive(w) for w in workers) and time.time() - t0 < 5:
        time.sleep(0.02)
    gone_after = time.time() - t0
    assert not any(_alive(w) for w in workers)
    assert gone_after < 0.5, f"workers outlived the parent by {gone_after:.2f} s"
