"""Prep on Beam's DirectRunner vs the single-machine prep, AudioSet-like input, in x realtime per core.

    .venv/bin/python bench/bench_beam_prep.py [--clips 64] [--workers 2]

Input: 10 s clips stored as 44.1 kHz stereo FLAC (as AudioSet downloads usually are), prepared into
128-bin Kaldi fbank shards. Each row is the marginal CPU time per clip of one whole run (parent +
workers: decode, resample, features, serialization, shuffles, TFRecord writing): the difference
between a run on all clips and on an eighth of them, so process start-up and imports cancel out.
CPU time, not wall time, keeps the figures meaningful on a shared machine; wall seconds of the
full run are recorded too. The Beam row is the per-core rate `audiossl prep --dry-run` plans with.
Writes bench/results/bench_beam_prep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time

import numpy as np
import soundfile as sf

from audiossl_jax.data import audio_io, beam_prep, demo, prep
from audiossl_jax.features import frontends

SECONDS = 10.0


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_beam_prep_")
    for i in range(args.clips):
        wave = demo.make_clip(0, "train", i, SECONDS)[0]
        stereo = audio_io.soxr.resample(np.stack([wave, wave], 1), 16000, 44100)
        sf.write(os.path.join(tmp, f"s{i:04d}.flac"), stereo, 44100, subtype="PCM_16")
    fbank = frontends.make_frontend("kaldi_fbank")
    quiet = lambda *_: None  # noqa: E731

    def run(kind: str, num_clips: int) -> tuple[float, float]:
        """(CPU seconds of the whole run incl. child processes, wall seconds)."""
        listing = os.path.join(tmp, f"list{num_clips}.csv")
        with open(listing, "w") as f:
            f.write("path,labels\n" + "".join(f"s{i:04d}.flac,\n" for i in range(num_clips)))
        out = os.path.join(tmp, f"{kind}{num_clips}", "train")
        start, cpu0 = time.perf_counter(), _cpu()
        if kind == "beam":
            beam_prep.prepare(listing, out, frontend=fbank, workers=args.workers, num_shards=args.workers, log=quiet)
        else:
            prep.prepare(
                listing, out, frontend=fbank, workers=args.workers, num_shards=args.workers, progress=False, log=quiet
            )
        return _cpu() - cpu0, time.perf_counter() - start

    rows, small = [], max(2, args.clips // 8)
    for kind, name in (("prep", "prepare (single machine)"), ("beam", "Beam DirectRunner, multi_processing")):
        run(kind, 2)  # warm up: imports in this process
        cpu_small, _ = run(kind, small)
        cpu_all, wall = run(kind, args.clips)
        marginal = cpu_all - cpu_small
        rows.append(
            {
                "stage": f"{name}, {args.workers} workers: flac 44.1k stereo -> fbank 128 shards",
                "marginal_cpu_seconds": marginal,
                "x_realtime_per_core": (args.clips - small) * SECONDS / marginal,
                "fixed_startup_cpu_seconds": cpu_small - small * marginal / (args.clips - small),
                "wall_seconds_all_clips": wall,
            }
        )
    load = os.getloadavg()[0]
    print(f"{args.clips} clips x {SECONDS:g} s; cpu_count={os.cpu_count()} load={load:.1f}")
    for r in rows:
        print(
            f"{r['stage']:75s} {r['x_realtime_per_core']:6.0f}x realtime/core  "
            f"start-up {r['fixed_startup_cpu_seconds']:5.1f} CPU-s  wall {r['wall_seconds_all_clips']:5.1f} s"
        )
    result = {
        "clips": args.clips,
        "clip_seconds": SECONDS,
        "cpu_count": os.cpu_count(),
        "load_average_1min": load,
        "machine": platform.machine(),
        "rows": rows,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_beam_prep.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
