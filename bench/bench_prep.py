"""Prep throughput: 10 s clips -> log-mel, in x realtime (seconds of audio per CPU/wall second).

    .venv/bin/python bench/bench_prep.py [--clips 64] [--workers N]

Rows: the feature computation alone (one core, in process) for each front end, decode + resample
+ fbank for 16 kHz and 44.1 kHz stereo files (one core), and the whole `prepare` (worker
processes, serialization, TFRecord writing) as marginal CPU time per clip: the difference between
runs on all clips and on an eighth of them, so process start-up and imports cancel out. CPU time
(not wall time) keeps the figures meaningful on a shared machine. BLAS runs single-threaded here,
as in prep's workers. Goal: >= 300x realtime per core for 128-bin fbank.
Writes bench/results/bench_prep.json.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # "per core": one BLAS thread, as prep workers use
import platform
import resource
import tempfile
import time

import numpy as np
import soundfile as sf

from audiossl_jax.data import audio_io, demo, prep
from audiossl_jax.features import frontends

SECONDS = 10.0


def _cpu_time(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_prep_")
    waves = [demo.make_clip(0, "train", i, SECONDS)[0] for i in range(args.clips)]
    paths16, paths44 = [], []
    for i, wave in enumerate(waves):
        paths16.append(os.path.join(tmp, f"c{i:04d}.wav"))
        sf.write(paths16[-1], wave, 16000, subtype="PCM_16")
        paths44.append(os.path.join(tmp, f"s{i:04d}.flac"))
        stereo = np.stack([wave, wave], 1)
        sf.write(paths44[-1], audio_io.soxr.resample(stereo, 16000, 44100), 44100, subtype="PCM_16")

    audio_seconds = args.clips * SECONDS
    fbank, mel = frontends.make_frontend("kaldi_fbank"), frontends.make_frontend("librosa_mel")
    fbank(waves[0]), mel(waves[0])  # warm caches (filters, librosa import)
    rows = []
    for name, fn, items in (
        ("kaldi_fbank 128 (features only)", fbank, waves),
        ("librosa_mel 64 (features only)", mel, waves),
        ("decode wav 16k + kaldi_fbank 128", lambda p: fbank(audio_io.load_audio(p)[0]), paths16),
        ("decode flac 44.1k stereo + resample + fbank", lambda p: fbank(audio_io.load_audio(p)[0]), paths44),
    ):
        cpu = _cpu_time(fn, items)
        rows.append({"stage": name, "cores": 1, "seconds": cpu, "x_realtime_per_core": audio_seconds / cpu})

    def prepare_cpu(num_clips: int) -> tuple[float, float]:
        """(CPU seconds of parent + workers, wall seconds) of `prepare` on the first num_clips."""
        listing = os.path.join(tmp, f"list{num_clips}.csv")
        with open(listing, "w") as f:
            f.write("path,labels\n" + "".join(f"{os.path.basename(p)},\n" for p in paths16[:num_clips]))

        def children():
            return resource.getrusage(resource.RUSAGE_CHILDREN)

        start, cpu0, kids0 = time.perf_counter(), time.process_time(), children()
        prep.prepare(
            listing,
            os.path.join(tmp, f"prepared{num_clips}"),
            frontend=fbank,
            workers=args.workers,
            num_shards=max(2, args.workers),
            progress=False,
            log=lambda *_: None,
        )
        wall = time.perf_counter() - start
        kids = children()
        return (time.process_time() - cpu0 + kids.ru_utime - kids0.ru_utime + kids.ru_stime - kids0.ru_stime), wall

    small = max(2, args.clips // 8)
    prepare_cpu(1)  # warm up: TensorFlow / tfds imports in this (the parent) process
    cpu_small, _ = prepare_cpu(small)
    cpu_all, wall = prepare_cpu(args.clips)
    marginal = cpu_all - cpu_small  # start-up costs (spawn, imports) cancel out
    rows.append(
        {
            "stage": f"prepare, marginal CPU per clip (parent + {args.workers} workers)",
            "cores": args.workers,
            "seconds": marginal,
            "x_realtime_per_core": (args.clips - small) * SECONDS / marginal,
            "fixed_startup_cpu_seconds": cpu_small - small * marginal / (args.clips - small),
            "wall_seconds_all_clips": wall,
        }
    )

    print(f"{args.clips} clips x {SECONDS:g} s; cpu_count={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    print(f"{'stage':50s} {'cores':>5s} {'seconds':>8s} {'x realtime/core':>16s}")
    for r in rows:
        print(f"{r['stage']:50s} {r['cores']:5d} {r['seconds']:8.2f} {r['x_realtime_per_core']:16.0f}")
    result = {
        "clips": args.clips,
        "clip_seconds": SECONDS,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.machine(),
        "goal_x_realtime_per_core": 300,
        "rows": rows,
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "bench_prep.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
