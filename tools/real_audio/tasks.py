"""What the benchmark contains: the labelled tasks (classes, groups, held-out groups) and the
unlabelled corpus, as a catalog of clip entries for the assembly stage.

A catalog entry: {"id", "task", "label", "group", "src", "start", "dur"}: cut [start, start+dur)
seconds of the audio file `src` (padded with zeros to `dur` for labelled clips). The split is
decided by the group alone (`split_of`), so train and test never share a group."""

from __future__ import annotations

import glob
import os
import re
import unicodedata

import numpy as np

from . import render

CLIP_SECONDS = 4.0
SLOT_SECONDS = 5.0
SEED = 20260101

# ------------------------------------------------------------------ soundfonts
SOUNDFONTS = {  # group name -> (package, path inside the package)
    "csound": ("csound-soundfont", "usr/share/sounds/sf2/sf_GMbank.sf2"),
    "musescore": ("musescore-general-soundfont-small", "usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
    "opl3": ("opl3-soundfont", "usr/share/sounds/sf2/OPL-3_FM_128M.sf2"),
    "timgm6mb": ("timgm6mb-soundfont", "usr/share/sounds/sf2/TimGM6mb.sf2"),
}
DRUM_TEST_SOUNDFONTS = ("timgm6mb",)  # drums: held-out soundfont
DRUM_KITS = (0, 16, 25, 40, 8, 32, 24)  # preferred GM kit programs (bank 128), first 4 present
DRUM_CLASSES = {
    "kick": (35, 36),
    "snare": (38, 40),
    "clap": (39,),
    "hihat_closed": (42, 44),
    "hihat_open": (46,),
    "crash": (49, 57),
    "ride": (51, 59),
    "tom": (41, 43, 45, 47, 48, 50),
}
DRUMS_PER_CLASS_PER_SF = 18

# GM families: programs and a pitch range
FAMILIES = {
    "piano": (range(0, 8), (45, 84)),
    "chromatic_percussion": (range(8, 16), (60, 96)),
    "organ": (range(16, 24), (45, 81)),
    "guitar": (range(24, 32), (40, 76)),
    "bass": (range(32, 40), (28, 55)),
    "strings": (range(40, 47), (50, 84)),
    "brass": (range(56, 64), (45, 77)),
    "reed": (range(64, 72), (50, 84)),
    "pipe": (range(72, 80), (60, 93)),
}
PROGRAMS_HELD_OUT_PER_FAMILY = 2
INSTRUMENT_CLIPS_PER_SF_PROGRAM = 2

# ------------------------------------------------------------------ speech
LANGUAGES = {  # label -> (espeak-ng voice, fortunes package, folder below usr/share/games/fortunes)
    "cs": ("cs", "fortunes-cs", "cs"),
    "de": ("de", "fortunes-de", "de"),
    "en": ("en", "fortunes", ""),
    "es": ("es", "fortunes-es", "es"),
    "it": ("it", "fortunes-it", "it"),
    "pl": ("pl", "fortunes-pl", "pl"),
    "ru": ("ru", "fortunes-ru", "ru"),
}
TRAIN_VARIANTS = ("m1", "m2", "m3", "f1", "f2")
TEST_VARIANTS = ("m4", "f3")  # held-out voices
UNLABELLED_VARIANTS = ("m5", "m6", "m7", "f4", "f5")
SENTENCES = {"test": 20, "train": 60, "unlabelled": 40}

# ------------------------------------------------------------------ unlabelled package audio
UNLABELLED_EXT = (".wav", ".ogg", ".oga", ".flac", ".mp3")
MAX_FILES_PER_PACKAGE = 150
MAX_WINDOWS = {"music": 12, "sfx": 2}
MIN_SECONDS = 0.3


def split_of(task: str, group: str) -> str:
    """train or test, from the group only."""
    if task == "drums":
        return "test" if group.split("/")[0] in DRUM_TEST_SOUNDFONTS else "train"
    if task == "instruments":
        return "test" if int(group.split("-")[1]) in held_out_programs() else "train"
    if task == "language":
        return "test" if group.split("/")[1] in TEST_VARIANTS else "train"
    raise KeyError(task)


def held_out_programs() -> set[int]:
    rng = np.random.default_rng(SEED + 1)
    out = set()
    for name in sorted(FAMILIES):
        progs = list(FAMILIES[name][0])
        out |= {int(p) for p in rng.choice(progs, PROGRAMS_HELD_OUT_PER_FAMILY, replace=False)}
    return out


def family_of(program: int) -> str | None:
    for name, (progs, _) in FAMILIES.items():
        if program in progs:
            return name
    return None


# ------------------------------------------------------------------ soundfont renders
def _sf_path(pkgs: str, group: str) -> str:
    pkg, rel = SOUNDFONTS[group]
    return os.path.join(pkgs, pkg, rel)


def drum_kits(bank_programs) -> list[int]:
    """The GM kits (bank 128 programs) drums are rendered from: the first 4 of DRUM_KITS that the
    soundfont has, given its (bank, program) pairs; kit 0 if none."""
    have = set(bank_programs)
    return [p for p in DRUM_KITS if (128, p) in have][:4] or [0]


def drum_slots(group: str, presets, seed: int, per_class: int, pattern: bool = False):
    kits = drum_kits((b, q) for b, q, _ in presets)
    rng = np.random.default_rng(seed)
    slots, meta = [], []
    for label in sorted(DRUM_CLASSES):
        for i in range(per_class):
            kit = kits[i % len(kits)]
            notes = []
            if pattern:  # unlabelled: a groove mixing every class
                allnotes = sorted(n for v in DRUM_CLASSES.values() for n in v)
                for step in range(16):
                    if rng.random() < 0.55:
                        notes.append((step * 0.24, 0.2, int(rng.choice(allnotes)), int(rng.integers(50, 128))))
            else:
                for h in range(3):
                    notes.append(
                        (
                            0.1 + 1.3 * h + float(rng.uniform(0, 0.3)),
                            0.5,
                            int(rng.choice(DRUM_CLASSES[label])),
                            int(rng.integers(50, 128)),
                        )
                    )
            slots.append({"channel": 9, "bank": 128, "program": kit, "notes": notes})
            meta.append({"label": label, "group": f"{group}/kit{kit}"})
    return slots, meta


def instrument_slots(group: str, presets, seed: int, per_program: int, mixed: bool = False):
    have = {(b, q) for b, q, _ in presets}
    rng = np.random.default_rng(seed)
    slots, meta = [], []
    for program in range(128):
        family = family_of(program)
        if family is None or (0, program) not in have:
            continue
        lo, hi = FAMILIES[family][1]
        for _ in range(per_program):
            notes, t = [], 0.0
            n = int(rng.integers(3, 6))
            for _ in range(n):
                dur = float(rng.uniform(0.45, 0.95))
                pitch = int(rng.integers(lo, hi + 1))
                notes.append((round(t, 3), round(dur, 3), pitch, int(rng.integers(70, 112))))
                if mixed and rng.random() < 0.5:  # unlabelled: add chord tones
                    notes.append((round(t, 3), round(dur, 3), min(hi, pitch + int(rng.choice([3, 4, 7]))), 80))
                t += dur + float(rng.uniform(0.0, 0.15))
            slots.append({"channel": 0, "bank": 0, "program": program, "notes": notes})
            meta.append({"label": family, "group": f"{group}/prog-{program}"})
    return slots, meta


def soundfont_entries(pkgs: str, render_dir: str, log=print) -> list[dict]:
    """Renders (or reuses) the drum and instrument slot renders; returns catalog entries."""
    entries = []
    for gi, group in enumerate(sorted(SOUNDFONTS)):
        sf = _sf_path(pkgs, group)
        presets = render.sf_presets(sf)
        jobs = [
            ("drums", drum_slots(group, presets, SEED + 100 + gi, DRUMS_PER_CLASS_PER_SF)),
            ("instruments", instrument_slots(group, presets, SEED + 200 + gi, INSTRUMENT_CLIPS_PER_SF_PROGRAM)),
            ("unlabelled-drums", drum_slots(group, presets, SEED + 300 + gi, 2, pattern=True)),
            ("unlabelled-instruments", instrument_slots(group, presets, SEED + 400 + gi, 1, mixed=True)),
        ]
        for kind, (slots, meta) in jobs:
            if kind.startswith("unlabelled-instruments"):  # one in three programs, keeps it short
                slots, meta = slots[gi % 3 :: 3], meta[gi % 3 :: 3]
            out = os.path.join(render_dir, "fluidsynth", f"{group}-{kind}.wav")
            log(f"fluidsynth {group} {kind}: {len(slots)} slots")
            render.fluidsynth_render(sf, slots, out, SLOT_SECONDS, CLIP_SECONDS)
            task = "unlabelled" if kind.startswith("unlabelled") else kind
            for k, m in enumerate(meta):
                if task == "unlabelled":
                    label, grp = "", f"synth/{group}"
                    cid = f"synth-{group}-{kind.split('-')[1]}-{k:04d}"
                elif task == "drums":
                    label, grp = m["label"], m["group"]
                    cid = f"{group}-{m['group'].split('/')[1]}-{m['label']}-{k:04d}"
                else:
                    label, grp = m["label"], m["group"].split("/")[1]
                    cid = f"{group}-{m['group'].split('/')[1]}-{k:04d}"
                entries.append(
                    {
                        "id": cid,
                        "task": task,
                        "label": label,
                        "group": grp,
                        "src": out,
                        "start": k * SLOT_SECONDS,
                        "dur": CLIP_SECONDS,
                    }
                )
    return entries


# ------------------------------------------------------------------ speech
def read_fortunes(folder: str) -> list[str]:
    """Sentences (one fortune each, 60-150 characters, mostly letters) from a fortune folder."""
    out = set()
    files = sorted(
        f
        for f in glob.glob(os.path.join(folder, "*"))
        if os.path.isfile(f) and not os.path.islink(f) and not f.endswith((".dat", ".u8"))
    )
    for path in files:
        raw = open(path, "rb").read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for chunk in text.split("\n%\n"):
            lines = [ln for ln in chunk.splitlines() if not ln.strip().startswith(("--", "-- ", "%"))]
            s = re.sub(r"\s+", " ", " ".join(lines)).strip()
            s = unicodedata.normalize("NFC", s)
            if not 60 <= len(s) <= 150:
                continue
            letters = sum(c.isalpha() or c.isspace() for c in s)
            if letters < 0.9 * len(s) or re.search(r"https?:|www\.|@|[<>{}\[\]|\\_=#*]", s):
                continue
            out.add(s)
    return sorted(out)


def speech_entries(pkgs: str, render_dir: str, log=print) -> list[dict]:
    entries = []
    for li, lang in enumerate(sorted(LANGUAGES)):
        voice, pkg, sub = LANGUAGES[lang]
        sentences = read_fortunes(os.path.join(pkgs, pkg, "usr/share/games/fortunes", sub))
        rng = np.random.default_rng(SEED + 500 + li)
        order = [sentences[i] for i in rng.permutation(len(sentences))]
        need = sum(SENTENCES.values())
        if len(order) < need:
            raise ValueError(f"{lang}: {len(order)} sentences, need {need}")
        parts, pos = {}, 0
        for part in ("test", "train", "unlabelled"):
            parts[part] = order[pos : pos + SENTENCES[part]]
            pos += SENTENCES[part]
        log(f"espeak-ng {lang}: {len(sentences)} usable sentences")
        for part, variants in (("test", TEST_VARIANTS), ("train", TRAIN_VARIANTS), ("unlabelled", UNLABELLED_VARIANTS)):
            for si, text in enumerate(parts[part]):
                variant = variants[si % len(variants)]
                speed, pitch = int(rng.integers(140, 190)), int(rng.integers(30, 71))
                sid = f"{lang}-{part}-s{si:03d}"
                wav = os.path.join(render_dir, "espeak", lang, f"{sid}-{variant}-{speed}-{pitch}.wav")
                render.espeak_render(text, f"{voice}+{variant}", speed, pitch, wav)
                if part == "unlabelled":
                    for w in range(2):
                        entries.append(
                            {
                                "id": f"speech-{sid}-w{w}",
                                "task": "unlabelled",
                                "label": "",
                                "group": f"speech/{lang}",
                                "src": wav,
                                "start": w * CLIP_SECONDS,
                                "dur": CLIP_SECONDS,
                                "window": True,
                            }
                        )
                else:
                    entries.append(
                        {
                            "id": f"{sid}-{variant}",
                            "task": "language",
                            "label": lang,
                            "group": f"{part}-s{si:03d}/{variant}",
                            "src": wav,
                            "start": 0.0,
                            "dur": CLIP_SECONDS,
                        }
                    )
    return entries


# ------------------------------------------------------------------ package audio (unlabelled)
def package_audio_entries(pkgs: str, roles: dict[str, str]) -> list[dict]:
    """4 s windows of the audio files in the sfx/music packages (at most MAX_WINDOWS per file,
    evenly spaced; files shorter than 4 s are kept whole)."""
    import soundfile as sf

    entries = []
    for pi, pkg in enumerate(sorted(p for p, r in roles.items() if r in MAX_WINDOWS)):
        root = os.path.join(pkgs, pkg)
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            files += [
                os.path.join(dirpath, n)
                for n in sorted(filenames)
                if n.lower().endswith(UNLABELLED_EXT) and not os.path.islink(os.path.join(dirpath, n))
            ]
        if len(files) > MAX_FILES_PER_PACKAGE:
            rng = np.random.default_rng(SEED + 600 + pi)
            files = [files[i] for i in sorted(rng.choice(len(files), MAX_FILES_PER_PACKAGE, replace=False))]
        for path in files:
            try:
                info = sf.info(path)
            except Exception:
                continue
            seconds = info.frames / info.samplerate
            if seconds < MIN_SECONDS:
                continue
            rel = os.path.relpath(path, root)
            stem = re.sub(r"[^A-Za-z0-9]+", "_", os.path.splitext(rel)[0]).strip("_")[-60:]
            n = int(seconds // CLIP_SECONDS)
            if n == 0:
                starts, dur = [0.0], seconds
            else:
                cap = MAX_WINDOWS[roles[pkg]]
                m = min(n, cap)
                idx = sorted({int(round(i * (n - 1) / max(m - 1, 1))) for i in range(m)})
                starts, dur = [i * CLIP_SECONDS for i in idx], CLIP_SECONDS
            for s in starts:
                entries.append(
                    {
                        "id": f"{pkg}-{stem}-{int(s):04d}",
                        "task": "unlabelled",
                        "label": "",
                        "group": f"{roles[pkg]}/{pkg}",
                        "src": path,
                        "start": s,
                        "dur": dur,
                        "window": True,
                    }
                )
    return entries
