"""Input pipeline throughput: clips/s reading 10 s float16 128-bin log-mel (1000 frames).

    .venv/bin/python bench/bench_pipeline.py [--clips 512] [--batch 64] [--seconds 8]

Writes synthetic shards (same format as `audiossl prep`) to a temporary folder, then measures the
training iterator (shuffle, random crop to 1000 frames, normalisation, labels, batching), the
evaluation iterator and, as a floor, raw TFRecord reading + parsing. Goal: >= 3000 clips/s on 2
cores for the training iterator. On a shared machine the wall rate depends on the other load;
clips per CPU-second (all of this process's threads) is the steadier figure. Writes bench/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from audiossl_jax.data import manifest as manifest_lib
from audiossl_jax.data import pipeline, records
from audiossl_jax.features import frontends

FRAMES, MEL, CLASSES, SHARDS = 1000, 128, 527, 8


def write_synthetic(out: str, clips: int, frames: int = FRAMES, mel: int = MEL, shards_: int = SHARDS) -> None:
    """`clips` synthetic float16 [frames, mel] clips in `shards_` TFRecord shards + manifest (as `audiossl prep`)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shards = []
    for k in range(shards_):
        name = records.shard_name("train", k, shards_)
        with tf.io.TFRecordWriter(os.path.join(out, name)) as w:
            n = len(range(k, clips, shards_))
            for i in range(n):
                feats = rng.normal(-5, 3, (frames, mel)).astype(np.float16)
                labels = sorted(rng.choice(CLASSES, 2, replace=False))
                w.write(records.serialize(feats, labels, f"clip{k}_{i}", 10.0))
        shards.append({"file": name, "num_examples": n, "num_bytes": os.path.getsize(os.path.join(out, name))})
    manifest_lib.write_json_atomic(
        os.path.join(out, "manifest.json"),
        {
            "format_version": manifest_lib.FORMAT_VERSION,
            "split": "train",
            "frontend": frontends.make_frontend("kaldi_fbank").params,
            "mel_bins": mel,
            "class_names": [f"c{i}" for i in range(CLASSES)],
            "num_examples": clips,
            "shards": shards,
            "mean": [-5.0] * mel,
            "std": [3.0] * mel,
        },
    )


def rate(iterator, batch: int, seconds: float) -> tuple[float, float]:
    """(clips per wall second, clips per CPU second of this process's threads)."""
    for _ in range(3):  # warm up: graph building, prefetch fill
        next(iterator)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        n += batch
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    import tensorflow as tf

    out = tempfile.mkdtemp(prefix="bench_pipeline_")
    write_synthetic(out, args.clips)

    def raw():
        files = [os.path.join(out, records.shard_name("train", k, SHARDS)) for k in range(SHARDS)]
        ds = tf.data.TFRecordDataset(files).map(
            lambda s: records.parse(s, MEL)["features"], num_parallel_calls=tf.data.AUTOTUNE
        )
        return ds.repeat().batch(args.batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    def evaluation():
        while True:
            yield from pipeline.eval_iterator(out, batch_size=args.batch, crop_frames=FRAMES)

    rows = [
        (
            "train_iterator (shuffle, crop 1000, normalise, labels)",
            pipeline.train_iterator(out, batch_size=args.batch, crop_frames=FRAMES, seed=0),
        ),
        ("eval_iterator (first 1000 frames, _mask padding)", evaluation()),
        ("raw TFRecord read + parse (floor)", raw()),
    ]
    results = []
    for name, it in rows:
        wall, cpu = rate(it, args.batch, args.seconds)
        results.append({"iterator": name, "clips_per_s": wall, "clips_per_cpu_s": cpu})
    print(
        f"{args.clips} clips of {FRAMES}x{MEL} float16 in {SHARDS} shards, batch {args.batch}; "
        f"cpu_count={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    print(f"{'iterator':58s} {'clips/s':>9s} {'clips/cpu-s':>12s}")
    for r in results:
        print(f"{r['iterator']:58s} {r['clips_per_s']:9.0f} {r['clips_per_cpu_s']:12.0f}")
    result = {
        "clips": args.clips,
        "frames": FRAMES,
        "mel_bins": MEL,
        "batch": args.batch,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.machine(),
        "goal_clips_per_s_2_cores": 3000,
        "rows": results,
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "bench_pipeline.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
