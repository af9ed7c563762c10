"""The real-audio benchmark builder (tools/real_audio) on a tiny synthetic source tree: no network,
no apt. Rendering tests skip when fluidsynth / espeak-ng are missing."""

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from audiossl_jax.data import sources
from tools.real_audio import assemble, checksums, packages, render, tasks


def _tone(path, seconds, rate, freq, seed, channels=1):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, rate, subtype="PCM_16")


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """Stand-ins for extracted packages and renders, plus a catalog over them."""
    root = tmp_path_factory.mktemp("src")
    pkgs = root / "pkgs"
    _tone(str(pkgs / "fake-music/usr/share/games/x/music/song.wav"), 13.0, 22050, 220, 0, channels=2)
    _tone(str(pkgs / "fake-sfx/usr/share/sounds/beep.wav"), 1.2, 44100, 880, 1)
    _tone(str(pkgs / "fake-sfx/usr/share/sounds/long.wav"), 9.0, 16000, 500, 2)
    entries = tasks.package_audio_entries(str(pkgs), {"fake-music": "music", "fake-sfx": "sfx"})
    # one long "render" per soundfont: slots of 5 s, like the fluidsynth renders
    labels = ["kick", "snare", "tom"]
    for gi, sfname in enumerate(["csound", "timgm6mb"]):
        src = str(root / f"render/{sfname}-drums.wav")
        _tone(src, 5.0 * 2 * len(labels), 16000, 100 + 50 * gi, 10 + gi)
        for k in range(2 * len(labels)):
            entries.append(
                {
                    "id": f"{sfname}-kit0-{labels[k % 3]}-{k:04d}",
                    "task": "drums",
                    "label": labels[k % 3],
                    "group": f"{sfname}/kit0",
                    "src": src,
                    "start": 5.0 * k,
                    "dur": 4.0,
                }
            )
    held = sorted(tasks.held_out_programs())
    for fam in ["piano", "bass"]:
        for prog in tasks.FAMILIES[fam][0]:
            if prog in held or prog % 3 == 0:
                src = str(root / f"render/prog{prog}.wav")
                _tone(src, 4.5, 16000, 200 + prog, prog)
                entries.append(
                    {
                        "id": f"x-prog-{prog}-0000",
                        "task": "instruments",
                        "label": fam,
                        "group": f"prog-{prog}",
                        "src": src,
                        "start": 0.0,
                        "dur": 4.0,
                    }
                )
    for lang in ["de", "en"]:
        for part, variants in (("train", tasks.TRAIN_VARIANTS), ("test", tasks.TEST_VARIANTS)):
            for si in range(3):
                v = variants[si % len(variants)]
                src = str(root / f"render/espeak/{lang}-{part}-{si}.wav")
                _tone(src, 2.5 + si, 22050, 300 + 20 * si, si)  # shorter than 4 s: padded
                entries.append(
                    {
                        "id": f"{lang}-{part}-s{si:03d}-{v}",
                        "task": "language",
                        "label": lang,
                        "group": f"{part}-s{si:03d}/{v}",
                        "src": src,
                        "start": 0.0,
                        "dur": 4.0,
                    }
                )
    for e in entries:
        e["source"] = os.path.relpath(e["src"], root)
    return root, entries


@pytest.fixture(scope="module")
def built(source_tree, tmp_path_factory):
    _, entries = source_tree
    outs = [str(tmp_path_factory.mktemp(f"out{i}")) for i in range(2)]
    summaries = [assemble.assemble(entries, out, log=lambda *_: None) for out in outs]
    return outs, summaries


def test_rebuild_is_byte_identical(built):
    (a, b), (sa, sb) = built
    sums_a = checksums.read_sha256sums(os.path.join(a, "SHA256SUMS"))
    sums_b = checksums.read_sha256sums(os.path.join(b, "SHA256SUMS"))
    assert sums_a == sums_b and len(sums_a) > 20
    assert sa == sb
    for rel, digest in sums_a.items():  # and the file matches its listed checksum
        assert checksums.sha256_file(os.path.join(a, rel)) == digest
    assert any(r.endswith(".csv") for r in sums_a) and any(r.endswith(".wav") for r in sums_a)


def test_rerun_in_place_is_idempotent(source_tree, built):
    (a, _), _ = built
    before = open(os.path.join(a, "SHA256SUMS")).read()
    assemble.assemble(source_tree[1], a, log=lambda *_: None)
    assert open(os.path.join(a, "SHA256SUMS")).read() == before


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_splits_group_disjoint_and_classes_in_both(built):
    (out, _), (summary, _) = built
    assert set(summary["tasks"]) == {"drums", "instruments", "language"}
    for task in summary["tasks"]:
        train = _rows(os.path.join(out, task, "train_meta.csv"))
        test = _rows(os.path.join(out, task, "test_meta.csv"))
        assert train and test
        assert not {r["group"] for r in train} & {r["group"] for r in test}
        assert {r["labels"] for r in train} == {r["labels"] for r in test}
    lang_train = _rows(os.path.join(out, "language", "train_meta.csv"))
    lang_test = _rows(os.path.join(out, "language", "test_meta.csv"))
    # held out by sentence and by voice
    assert not {r["group"].split("/")[0] for r in lang_train} & {r["group"].split("/")[0] for r in lang_test}
    assert not {r["group"].split("/")[1] for r in lang_train} & {r["group"].split("/")[1] for r in lang_test}


def test_csvs_load_with_list_inputs(built):
    (out, _), (summary, _) = built
    for task in summary["tasks"]:
        train = sources.list_inputs(os.path.join(out, task, "train.csv"))
        assert not train.skipped and len(train.clips) == summary["tasks"][task]["train"]["clips"]
        test = sources.list_inputs(os.path.join(out, task, "test.csv"), class_names=train.class_names)
        assert not test.skipped and test.clips
        for clip in train.clips[:3] + test.clips[:3]:
            x, sr = sf.read(clip.path)
            assert sr == 16000 and x.ndim == 1 and len(x) == 64000
    unl = sources.list_inputs(os.path.join(out, "unlabelled", "unlabelled.csv"))
    assert not unl.skipped and unl.class_names == [] and all(c.labels == () for c in unl.clips)
    # windows: 13 s music -> 3 of 4 s (not the remainder), 1.2 s beep kept whole, 9 s -> 2
    assert len(unl.clips) == summary["unlabelled"]["clips"] == 3 + 1 + 2
    # test clips are never in the unlabelled set
    test_ids = {
        os.path.basename(c.path)
        for t in summary["tasks"]
        for c in sources.list_inputs(os.path.join(out, t, "test.csv")).clips
    }
    assert not test_ids & {os.path.basename(c.path) for c in unl.clips}


def test_reserved_packages_refused():
    assert not [p for p in packages.PACKAGES if packages.is_reserved(p)]
    for bad in ("hydrogen-drumkits", "asterisk-core-sounds-en-wav", "fluid-soundfont-gm"):
        with pytest.raises(ValueError):
            packages.check_not_reserved([bad])


def test_midi_writer_and_presets(tmp_path):
    slots, meta = tasks.drum_slots("x", [(128, 0, "Standard")], seed=0, per_class=1)
    assert len(slots) == len(tasks.DRUM_CLASSES) and {m["label"] for m in meta} == set(tasks.DRUM_CLASSES)
    mid = tmp_path / "a.mid"
    render.write_midi(str(mid), render.slot_events(slots, 5.0, 4.0))
    data = mid.read_bytes()
    assert data[:4] == b"MThd" and b"MTrk" in data
    render.write_midi(str(tmp_path / "b.mid"), render.slot_events(slots, 5.0, 4.0))
    assert (tmp_path / "b.mid").read_bytes() == data


@pytest.mark.skipif(not render.have("espeak-ng"), reason="espeak-ng not installed")
def test_espeak_render_deterministic(tmp_path):
    a = render.espeak_render("Guten Tag, wie geht es Ihnen heute?", "de+m1", 160, 50, str(tmp_path / "a.wav"))
    b = render.espeak_render("Guten Tag, wie geht es Ihnen heute?", "de+m1", 160, 50, str(tmp_path / "b.wav"))
    assert checksums.sha256_file(a) == checksums.sha256_file(b) and sf.info(a).frames > 0


SF = "/usr/share/sounds/sf2/TimGM6mb.sf2"


@pytest.mark.skipif(
    not render.have("fluidsynth") or not os.path.exists(SF),
    reason="fluidsynth or an installed TimGM6mb soundfont missing",
)
def test_fluidsynth_render_deterministic(tmp_path):
    slots, _ = tasks.instrument_slots("t", [(0, 0, "p")], seed=0, per_program=1)
    a = render.fluidsynth_render(SF, slots, str(tmp_path / "a.wav"), 5.0, 4.0)
    b = render.fluidsynth_render(SF, slots, str(tmp_path / "b.wav"), 5.0, 4.0)
    # the float wav's PEAK chunk holds a time stamp: compare the samples (assembly re-encodes them)
    xa, ra = sf.read(a)
    xb, rb = sf.read(b)
    assert ra == rb == 16000 and xa.shape == xb.shape and np.array_equal(xa, xb) and np.abs(xa).max() > 0
