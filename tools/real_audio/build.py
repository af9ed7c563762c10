"""Builds the real-audio development benchmark from Debian packages, offline after the download.

    .venv/bin/python -m tools.real_audio.build --out runs/real_audio

Stages (each skips work already done): tools (apt-get install fluidsynth espeak-ng when missing
and running as root) -> packages (apt-get download + dpkg-deb -x into <cache>) -> render
(fluidsynth / espeak-ng into <cache>/render) -> assemble (<out>/audio: wavs, CSVs, SHA256SUMS)
-> benchmark.json -> prep (audiossl prep, two front ends, <out>/data/<frontend>/) -> suite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import assemble, checksums, packages, render, tasks

FRONTENDS = {
    "librosa_mel": ["--frontend", "librosa_mel", "--num-mel-bins", "64"],
    "kaldi_fbank": ["--frontend", "kaldi_fbank", "--window-type", "hanning"],
}
TASK_TYPES = {"drums": "multiclass", "instruments": "multiclass", "language": "multiclass"}


def ensure_tools(log=print) -> None:
    missing = [t for t in packages.TOOLS if not render.have(t)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing tools {missing}: apt-get install --no-install-recommends {' '.join(packages.TOOLS)}")
    log(f"apt-get install {missing}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages.TOOLS], check=True, env=env)


def catalog(cache: str, log=print) -> tuple[list[dict], dict]:
    pkgs = os.path.join(cache, "pkgs")
    rdir = os.path.join(cache, "render")
    entries = (
        tasks.soundfont_entries(pkgs, rdir, log)
        + tasks.speech_entries(pkgs, rdir, log)
        + tasks.package_audio_entries(pkgs, packages.PACKAGES)
    )
    for e in entries:  # recorded in meta CSVs: relative to the cache, so outputs do not depend on it
        e["source"] = os.path.relpath(e["src"], cache)
    return entries, {}


def prep(out: str, summary: dict, workers: int | None, log=print) -> dict[str, str]:
    audio = os.path.join(out, "audio")
    suites = {}
    for fe, args in FRONTENDS.items():
        base = os.path.join(out, "data", fe)
        jobs = [("unlabelled", os.path.join(audio, "unlabelled", "unlabelled.csv"), None)]
        for task in sorted(summary["tasks"]):
            jobs.append((f"{task}/train", os.path.join(audio, task, "train.csv"), None))
            jobs.append((f"{task}/test", os.path.join(audio, task, "test.csv"), os.path.join(base, task, "train")))
        for name, csv_path, classes_from in jobs:
            target = os.path.join(base, name)
            cmd = [
                sys.executable,
                "-m",
                "audiossl_jax.cli",
                "prep",
                "--input",
                csv_path,
                "--out",
                target,
                "--no-progress",
                "--strict",
                *args,
            ]
            if name.endswith("/train") or name.endswith("/test"):
                cmd += ["--split", name.split("/")[1]]
            if classes_from:
                cmd += ["--classes-from", classes_from]
            if workers:
                cmd += ["--workers", str(workers)]
            log(f"prep {fe} {name}")
            subprocess.run(["nice", "-n", "10", *cmd], check=True, stdout=subprocess.DEVNULL)
        suite = {
            "tasks": [
                {
                    "name": t,
                    "train_dir": os.path.abspath(os.path.join(base, t, "train")),
                    "test_dir": os.path.abspath(os.path.join(base, t, "test")),
                    "type": TASK_TYPES[t],
                }
                for t in sorted(summary["tasks"])
            ],
            "unlabelled_dir": os.path.abspath(os.path.join(base, "unlabelled")),
        }
        path = os.path.join(base, "suite.json")
        with open(path, "w") as f:
            json.dump(suite, f, indent=1)
            f.write("\n")
        suites[fe] = path
    return suites


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/real_audio")
    p.add_argument("--cache", default=None, help="downloads and renders (default: <out>/cache)")
    p.add_argument("--no-prep", action="store_true", help="stop after assembly + benchmark.json")
    p.add_argument("--workers", type=int, default=None, help="audiossl prep workers")
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    cache = os.path.abspath(a.cache or os.path.join(out, "cache"))
    t0 = time.time()
    times = {}

    def log(msg):
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    ensure_tools(log)
    pk = packages.fetch(cache, log=log)
    times["packages"] = time.time() - t0
    entries, _ = catalog(cache, log)
    times["render"] = time.time() - t0
    log(f"assemble {len(entries)} catalog entries")
    summary = assemble.assemble(entries, os.path.join(out, "audio"), log=log)
    times["assemble"] = time.time() - t0
    held = sorted(tasks.held_out_programs())
    bench = {
        "packages": {
            n: {"version": v["version"], "role": v["role"], "deb": v["deb"], "sha256": v["sha256"]}
            for n, v in sorted(pk.items())
        },
        "tools": {t: packages.installed_version(t) for t in packages.TOOLS},
        "reserved_packages_not_used": sorted(packages.RESERVED) + [p + "*" for p in packages.RESERVED_PREFIXES],
        "clip_seconds": tasks.CLIP_SECONDS,
        "sample_rate": assemble.RATE,
        "seed": tasks.SEED,
        "render": {
            "fluidsynth": {
                "sample_rate": render.FS_RATE,
                "gain": render.FS_GAIN,
                "reverb": False,
                "chorus": False,
                "format": "float",
            }
        },
        "splits": {
            "drums": {"group": "soundfont/kit", "test_soundfonts": list(tasks.DRUM_TEST_SOUNDFONTS)},
            "instruments": {"group": "GM program", "test_programs": held},
            "language": {
                "group": "sentence/voice variant",
                "train_variants": list(tasks.TRAIN_VARIANTS),
                "test_variants": list(tasks.TEST_VARIANTS),
            },
        },
        **summary,
        "sha256sums": checksums.sha256_file(os.path.join(out, "audio", "SHA256SUMS")),
    }
    bench["total_minutes"] = round(
        summary["unlabelled"].get("minutes", 0)
        + sum(s["minutes"] for t in summary["tasks"].values() for s in t.values()),
        2,
    )
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump(bench, f, indent=1, sort_keys=True)
        f.write("\n")
    log(f"unlabelled: {summary['unlabelled']['clips']} clips, {summary['unlabelled']['minutes']} min")
    for t, s in summary["tasks"].items():
        log(f"{t}: " + ", ".join(f"{k} {v['clips']} clips {v['class_counts']}" for k, v in s.items()))
    if not a.no_prep:
        suites = prep(out, summary, a.workers, log)
        times["prep"] = time.time() - t0
        log(f"suite files: {suites}")
    with open(os.path.join(out, "build_times.json"), "w") as f:
        json.dump({k: round(v, 1) for k, v in times.items()}, f, indent=1)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
