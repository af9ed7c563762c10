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

from tools.real_audio import tasks
from tools.real_audio.render import pdta_chunks, sf_name, sf_records

GEN_KEY_RANGE, GEN_INSTRUMENT, GEN_SAMPLE = 43, 41, 53


def _zone_gens(bags, gens, first: int, last: int) -> list[dict[int, int]]:
    return [dict(gens[bags[b][0] : bags[b + 1][0]]) for b in range(first, last)]


def _key_range(gens: dict[int, int]) -> tuple[int, int]:
    r = gens.get(GEN_KEY_RANGE)
    return (0, 127) if r is None else (r & 0xFF, r >> 8)


def preset_samples(path: str) -> dict[tuple[int, int], list[tuple[int, int, tuple[str, float]]]]:
    """(bank, program) -> [(low key, high key, (sample name, seconds))] over the preset's zones: each
    preset zone's instrument zones, key ranges intersected."""
    pd = pdta_chunks(path)
    phdr, pbag, pgen = (
        sf_records(pd["phdr"], "<20sHHHIII"),
        sf_records(pd["pbag"], "<HH"),
        sf_records(pd["pgen"], "<HH"),
    )
    inst, ibag, igen = sf_records(pd["inst"], "<20sH"), sf_records(pd["ibag"], "<HH"), sf_records(pd["igen"], "<HH")
    shdr = sf_records(pd["shdr"], "<20sIIIIIBbHH")
    samples = [(sf_name(s[0]), round((s[2] - s[1]) / max(s[5], 1), 3)) for s in shdr]
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


def drum_report(fonts: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """class -> soundfont -> {samples, shared_with: {other soundfont: samples of this class it also has}}."""
    per = {
        name: {
            label: set().union(*(samples_of(presets, 128, k, notes) for k in tasks.drum_kits(presets)))
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
            mine, family = samples_of(presets, 0, p), tasks.FAMILIES[tasks.family_of(p)][0]
            shared = [q for q in family if q not in held_out and mine & samples_of(presets, 0, q)]
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
    held_out = tasks.held_out_programs()
    instruments = instrument_report(fonts, held_out)
    print("instruments: held-out programs playing a sample of a training program of the same family")
    for name, rows in instruments.items():
        print(f"  {name}: {len(rows)} of {len(held_out)}" + "".join(f"; {p} <- {q}" for p, q in rows.items()))
    out = os.path.join(args.benchmark, "shared_samples.json")
    with open(out, "w") as f:
        json.dump({"drums": drums, "instruments": instruments}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
