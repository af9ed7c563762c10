"""Which recorded samples the benchmark's soundfonts and programs share.

    .venv/bin/python -m tools.real_audio.shared_samples --benchmark runs/real_audio

The drum and instrument tasks hold out soundfonts and GM programs, not samples. A soundfont built
from another's samples, or a program that plays another program's samples, puts near-copies of test
clips in the probe's training split. This reads the SF2 files the benchmark renders from (its
package cache) and prints:
- drums: per class and soundfont, the samples its notes play in the kits the benchmark renders, and
  how many of them a training soundfont also has (same sample name and length in seconds);
- instruments: per soundfont, each held-out program that plays a sample a training program of the
  same family also plays.
Writes `<benchmark>/shared_samples.json`. SF3 files store compressed sample offsets, so their
lengths are not comparable; their names still are.
"""

from __future__ import annotations

import argparse
import json
import os
import struct

from tools.real_audio import tasks
from tools.real_audio.render import pdta_chunks

GEN_KEY_RANGE, GEN_INSTRUMENT, GEN_SAMPLE = 43, 41, 53


def _records(chunk: bytes, fmt: str) -> list[tuple]:
    n = struct.calcsize(fmt)
    return [struct.unpack(fmt, chunk[i : i + n]) for i in range(0, len(chunk) - n + 1, n)]


def _name(raw: bytes) -> str:
    return raw.split(b"\0")[0].decode("latin-1").strip()


def _zone_gens(bags, gens, first: int, last: int) -> list[dict[int, int]]:
    return [dict(gens[bags[b][0] : bags[b + 1][0]]) for b in range(first, last)]


def _key_range(gens: dict[int, int]) -> tuple[int, int]:
    r = gens.get(GEN_KEY_RANGE)
    return (0, 127) if r is None else (r & 0xFF, r >> 8)


def preset_samples(path: str) -> dict[tuple[int, int], list[tuple[int, int, tuple[str, float]]]]:
    """(bank, program) -> [(low key, high key, (sample name, seconds))] over the preset's zones: each
    preset zone's instrument zones, key ranges intersected."""
    pd = pdta_chunks(path)
    phdr, pbag, pgen = _records(pd["phdr"], "<20sHHHIII"), _records(pd["pbag"], "<HH"), _records(pd["pgen"], "<HH")
    inst, ibag, igen = _records(pd["inst"], "<20sH"), _records(pd["ibag"], "<HH"), _records(pd["igen"], "<HH")
    shdr = _records(pd["shdr"], "<20sIIIIIBbHH")
    samples = [(_name(s[0]), round((s[2] - s[1]) / max(s[5], 1), 3)) for s in shdr]
    out = {}
    for p in range(len(phdr) - 1):  # the last record is EOP
        zones = []
        for pz in _zone_gens(pbag, pgen, phdr[p][3], phdr[p + 1][3]):
            if GEN_INSTRUMENT not in pz:
                continue
            plo, phi = _key_range(pz)
            i = pz[GEN_INSTRUMENT]
            for iz in _zone_gens(ibag, igen, inst[i][1], inst[i + 1][1]):
                lo, hi = _key_range(iz)
                if GEN_SAMPLE in iz and max(lo, plo) <= min(hi, phi):
                    zones.append((max(lo, plo), min(hi, phi), samples[iz[GEN_SAMPLE]]))
        out[(phdr[p][2], phdr[p][1])] = zones
    return out


def samples_of(presets, bank: int, program: int, notes=range(128)) -> set[tuple[str, float]]:
    """The samples (name, seconds) that `notes` play on preset (bank, program)."""
    return {s for lo, hi, s in presets.get((bank, program), []) if any(lo <= n <= hi for n in notes)}


def drum_kits(presets) -> list[int]:
    """The kits the benchmark renders drums from (tasks.drum_slots' rule)."""
    return [p for p in tasks.DRUM_KITS if (128, p) in presets][:4] or [0]


def drum_report(fonts: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """class -> soundfont -> {samples, shared_with: {other soundfont: samples of this class it also has}}."""
    per = {
        name: {
            label: set().union(*(samples_of(presets, 128, k, notes) for k in drum_kits(presets)))
            for label, notes in tasks.DRUM_CLASSES.items()
        }
        for name, presets in fonts.items()
    }
    every = {name: set().union(*per[name].values()) for name in fonts}
    return {
        label: {
            name: {
                "samples": len(per[name][label]),
                "shared_with": {
                    other: len(per[name][label] & every[other])
                    for other in fonts
                    if other != name and per[name][label] & every[other]
                },
            }
            for name in fonts
        }
        for label in sorted(tasks.DRUM_CLASSES)
    }


def instrument_report(fonts: dict[str, dict], held_out: set[int]) -> dict[str, dict[int, list[int]]]:
    """soundfont -> held-out program -> the training programs of its family that play one of its samples."""
    out = {}
    for name, presets in fonts.items():
        rows = {}
        for p in sorted(held_out):
            mine, family = samples_of(presets, 0, p), tasks.family_of(p)
            shared = (
                [q for q in tasks.FAMILIES[family][0] if q not in held_out and mine & samples_of(presets, 0, q)]
                if family
                else []
            )
            if shared:
                rows[p] = shared
        out[name] = rows
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", default="runs/real_audio", help="the benchmark's folder (make real-audio)")
    args = ap.parse_args(argv)
    fonts = {}
    for name in sorted(tasks.SOUNDFONTS):
        pkg, rel = tasks.SOUNDFONTS[name]
        path = os.path.join(args.benchmark, "cache", "pkgs", pkg, rel)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: build the benchmark first (make real-audio)")
        fonts[name] = preset_samples(path)
    drums = drum_report(fonts)
    test = set(tasks.DRUM_TEST_SOUNDFONTS)
    print("drums: samples per class and soundfont; [n in X] = n of them also in soundfont X (* = test split)")
    for label, row in drums.items():
        cells = []
        for name, r in row.items():
            shared = ", ".join(f"{n} in {o}" for o, n in r["shared_with"].items())
            cells.append(f"{name}{'*' if name in test else ''} {r['samples']}" + (f" [{shared}]" if shared else ""))
        print(f"  {label:<13}" + "; ".join(cells))
    instruments = instrument_report(fonts, tasks.held_out_programs())
    print("instruments: held-out programs playing a sample of a training program of the same family")
    for name, rows in instruments.items():
        print(
            f"  {name}: {len(rows)} of {len(tasks.held_out_programs())}"
            + "".join(f"; {p} <- {q}" for p, q in rows.items())
        )
    out = os.path.join(args.benchmark, "shared_samples.json")
    with open(out, "w") as f:
        json.dump({"drums": drums, "instruments": instruments}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
