"""tools/real_audio/shared_samples: SF2 preset -> sample resolution and the shared-sample reports."""

import struct

import pytest

from tools.real_audio import shared_samples, tasks


def _chunk(cid: bytes, payload: bytes) -> bytes:
    return cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) & 1 else b"")


def _sf2(path, presets, instruments, samples):
    """presets: [(name, bank, program, [(key range or None, instrument index)])];
    instruments: [(name, [(key range or None, sample index)])]; samples: [(name, frames, rate)]."""

    def zones(entries, gen_id):
        bags, gens = [], []
        for key_range, target in entries:
            bags.append((len(gens), 0))
            if key_range:
                gens.append((shared_samples.GEN_KEY_RANGE, key_range[0] | key_range[1] << 8))
            gens.append((gen_id, target))
        return bags, gens

    phdr, pbag, pgen = b"", [], []
    for name, bank, program, entries in presets:
        phdr += struct.pack("<20sHHHIII", name.encode(), program, bank, len(pbag), 0, 0, 0)
        b, g = zones(entries, shared_samples.GEN_INSTRUMENT)
        pbag += [(x + len(pgen), 0) for x, _ in b]
        pgen += g
    phdr += struct.pack("<20sHHHIII", b"EOP", 0, 0, len(pbag), 0, 0, 0)
    inst, ibag, igen = b"", [], []
    for name, entries in instruments:
        inst += struct.pack("<20sH", name.encode(), len(ibag))
        b, g = zones(entries, shared_samples.GEN_SAMPLE)
        ibag += [(x + len(igen), 0) for x, _ in b]
        igen += g
    inst += struct.pack("<20sH", b"EOI", len(ibag))
    shdr, start = b"", 0
    for name, frames, rate in samples + [("EOS", 0, 0)]:
        shdr += struct.pack("<20sIIIIIBbHH", name.encode(), start, start + frames, 0, 0, rate, 60, 0, 0, 1)
        start += frames
    pack = lambda recs: b"".join(struct.pack("<HH", *r) for r in recs)  # noqa: E731
    pdta = b"pdta" + b"".join(
        _chunk(c, p)
        for c, p in [
            (b"phdr", phdr),
            (b"pbag", pack(pbag + [(len(pgen), 0)])),
            (b"pgen", pack(pgen + [(0, 0)])),
            (b"inst", inst),
            (b"ibag", pack(ibag + [(len(igen), 0)])),
            (b"igen", pack(igen + [(0, 0)])),
            (b"shdr", shdr),
        ]
    )
    body = b"sfbk" + _chunk(b"LIST", b"INFO") + _chunk(b"LIST", pdta)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return str(path)


def _kit(tmp_path, name, open_hat_rate):
    samples = [
        ("Open High Hat", open_hat_rate // 2, open_hat_rate),
        ("Ride Ping", 8606, 44100),
        ("Piano C4", 44100, 44100),
    ]
    return _sf2(
        tmp_path / f"{name}.sf2",
        presets=[("Standard", 128, 0, [(None, 0)]), ("Honky", 0, 3, [(None, 1)]), ("Grand", 0, 0, [(None, 1)])],
        instruments=[("kit", [((46, 46), 0), ((51, 51), 1)]), ("piano", [((0, 127), 2)])],
        samples=samples,
    )


def test_preset_samples_resolve_key_ranges_to_samples(tmp_path):
    presets = shared_samples.preset_samples(_kit(tmp_path, "a", 22050))
    assert shared_samples.samples_of(presets, 128, 0, [46]) == {("Open High Hat", 0.5)}
    assert shared_samples.samples_of(presets, 128, 0, [51, 59]) == {("Ride Ping", 0.195)}
    assert shared_samples.samples_of(presets, 128, 0, [36]) == set()
    assert shared_samples.samples_of(presets, 0, 3) == shared_samples.samples_of(presets, 0, 0) == {("Piano C4", 1.0)}
    assert tasks.drum_kits(presets) == [0]


def test_reports_count_shared_samples(tmp_path):
    # the same recording at another rate has the same length in seconds: shared
    fonts = {
        n: shared_samples.preset_samples(_kit(tmp_path, n, r)) for n, r in [("csound", 44100), ("timgm6mb", 22050)]
    }
    drums = shared_samples.drum_report(fonts)
    assert drums["hihat_open"]["timgm6mb"] == {"samples": 1, "shared_with": {"csound": 1}}
    assert drums["ride"]["csound"] == {"samples": 1, "shared_with": {"timgm6mb": 1}}
    assert drums["kick"]["csound"] == {"samples": 0, "shared_with": {}}
    # program 3 (held out) plays the sample of program 0 (training, same family: piano)
    assert shared_samples.instrument_report(fonts, {3}) == {"csound": {3: [0]}, "timgm6mb": {3: [0]}}
    assert shared_samples.instrument_report(fonts, {0, 3}) == {"csound": {}, "timgm6mb": {}}
    assert tasks.family_of(3) == tasks.family_of(0) == "piano"


def test_not_a_soundfont_is_refused(tmp_path):
    bad = tmp_path / "x.sf2"
    bad.write_bytes(b"RIFF\0\0\0\0WAVE")
    with pytest.raises(ValueError, match="not a SoundFont"):
        shared_samples.preset_samples(str(bad))
