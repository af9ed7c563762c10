"""Step time, FLOPs and memory of a training step against clip length and against batch size.

    .venv/bin/python bench/bench_scaling.py                       # conformer S and reduced EAT, ~10 min on 2 cores
    .venv/bin/python bench/bench_scaling.py --methods eat --seconds 2.5,5,10 --batches 1,2 --steps 3

For each method (a config + overrides, below) it times the jitted step (`bench_train_step.time_jax_step`:
the step `audiossl pretrain` runs, synthetic data) at every clip length of `--seconds` (batch
`--length-batch`) and at every batch size of `--batches` (clips of `--batch-seconds`). Per point:
median step time, GFLOP per step (XLA's cost analysis), XLA's compiled peak memory (arguments +
outputs - donated + temporaries) and its temporaries alone.

Where the cost stops being linear: for each sweep, the local exponent between neighbouring points
(time ~ work^k: k = 1 is linear, 2 quadratic), for the time and for the FLOPs, and the share of the
FLOPs that grows with the square of the length (attention), from a least-squares fit
GFLOP = c + a L + b L^2 over the sweep (c: work that does not grow with the clip). A time exponent
above the FLOP exponent means the step got slower per FLOP (memory traffic, cache), not more work.

Writes a JSON (`--out`), prints one table per sweep, and draws a PNG next to the JSON (time and
memory against clip length, time per clip against batch size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_train_step  # noqa: E402  (bench/bench_train_step.py)

from audiossl_jax.config_loader import load_config  # noqa: E402

# name -> (config, mel bins, frame multiple, overrides): the shapes of bench/RESULTS.md's CPU rows.
METHODS = {
    "wav2vec2": ("configs/wav2vec2_conformer.py:S", 64, 4, []),
    "eat": (
        "configs/eat.py:base",
        128,
        16,
        [
            "model.depth=4",
            "model.dim=384",
            "model.num_heads=6",
            "model.decoder_dim=384",
            "objective.average_top_k_layers=4",
        ],
    ),
}
FRAMES_PER_SECOND = 100  # 10 ms hop


def frames_for(seconds: float, multiple: int) -> int:
    """Frames of a clip of `seconds`, rounded to a multiple of the model's token stride (>= 1 token)."""
    return max(multiple, int(round(seconds * FRAMES_PER_SECOND / multiple)) * multiple)


def local_exponents(x: list[float], y: list[float]) -> list[float | None]:
    """d log y / d log x between neighbouring points (None for the first)."""
    out: list[float | None] = [None]
    for i in range(1, len(x)):
        if x[i] == x[i - 1] or y[i] <= 0 or y[i - 1] <= 0:
            out.append(None)
        else:
            out.append(math.log(y[i] / y[i - 1]) / math.log(x[i] / x[i - 1]))
    return out


def quadratic_share(lengths: list[float], gflop: list[float]) -> list[float] | None:
    """Least-squares fit gflop = c + a L + b L^2 (c: work that does not grow with the clip, e.g. the
    optimizer and EMA updates); the share b L^2 / gflop_fit at each length. None with fewer than 3
    points; 0 everywhere when the best fit has b < 0 (no super-linear growth)."""
    if len(lengths) < 3:
        return None
    x = np.asarray(lengths, float)
    design = np.stack([np.ones_like(x), x, x * x], 1)
    (c, a, b), *_ = np.linalg.lstsq(design, np.asarray(gflop, float), rcond=None)
    if b < 0:  # no growth faster than linear to be seen: the best fit with b = 0
        return [0.0] * len(lengths)
    total = c + a * x + b * x * x
    return [float(v) for v in np.where(total > 0, b * x * x / total, 0.0)]


def measure(config, batch: int, frames: int, mel: int, steps: int) -> dict:
    run = bench_train_step.time_jax_step(config, bench_train_step.synthetic_batch(batch, frames, mel), steps)
    mem = run["memory"]
    return {
        "batch": batch,
        "frames": frames,
        "seconds": frames / FRAMES_PER_SECOND,
        "median_step_seconds": run["median_step_seconds"],
        "step_seconds": run["step_seconds"],
        "gflop_per_step": run["gflop_per_step"],
        "compile_seconds": run["compile_seconds"],
        "compiled_peak_bytes": mem.get("compiled_peak_bytes"),
        "temp_bytes": mem.get("temp_size_in_bytes"),
    }


def annotate(points: list[dict], key: str) -> None:
    """Adds the local time / FLOP exponents against `key` (work per step: clip length or batch)."""
    x = [p[key] for p in points]
    for name, field in (("time_exponent", "median_step_seconds"), ("flop_exponent", "gflop_per_step")):
        for p, k in zip(points, local_exponents(x, [p[field] for p in points])):
            p[name] = k


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(title: str, points: list[dict], key: str) -> None:
    print(f"\n{title}")
    head = (
        f"{key:>8} {'s/step':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'peak MB':>8} {'temp MB':>8} {'k_time':>7} {'k_flop':>7}"
    )
    print(head + (f" {'quad.':>6}" if "quadratic_share" in points[0] else ""))
    for p in points:
        row = (
            f"{p[key]:>8g} {p['median_step_seconds']:>8.3f} {p['gflop_per_step']:>8.1f} "
            f"{p['gflop_per_step'] / p['median_step_seconds']:>8.1f} "
            f"{_fmt(p['compiled_peak_bytes'] and p['compiled_peak_bytes'] / 2**20, '8.0f')} "
            f"{_fmt(p['temp_bytes'] and p['temp_bytes'] / 2**20, '8.0f')} "
            f"{_fmt(p.get('time_exponent'), '7.2f')} {_fmt(p.get('flop_exponent'), '7.2f')}"
        )
        if "quadratic_share" in p:
            row += f" {p['quadratic_share']:>6.1%}"
        print(row)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in result["methods"].items():
        pts = r["length"]
        if pts:
            x = [p["seconds"] for p in pts]
            t = [p["median_step_seconds"] for p in pts]
            (line,) = axes[0].loglog(x, t, "o-", label=name)
            axes[0].loglog(
                x, [t[0] * v / x[0] for v in x], ":", color=line.get_color(), label=f"{name}, linear from {x[0]:g} s"
            )
            mem = [p["compiled_peak_bytes"] / 2**20 for p in pts if p["compiled_peak_bytes"]]
            if len(mem) == len(x):
                axes[1].loglog(x, mem, "o-", color=line.get_color(), label=name)
        pts = r["batch"]
        if pts:
            axes[2].semilogx(
                [p["batch"] for p in pts],
                [p["median_step_seconds"] / p["batch"] for p in pts],
                "o-",
                label=name,
                base=2,
            )
    axes[0].set(xlabel="clip length (s)", ylabel="step time (s)", title=f"batch {result['length_batch']}")
    axes[1].set(xlabel="clip length (s)", ylabel="XLA peak memory (MiB)", title="compiled peak memory")
    axes[2].set(
        xlabel="batch size (clips)", ylabel="step time per clip (s)", title=f"{result['batch_seconds']:g} s clips"
    )
    from matplotlib.ticker import NullFormatter

    # tick at the requested lengths (each model rounds them to its own token stride)
    lengths = sorted(
        {p.get("requested_seconds", p["seconds"]) for r in result["methods"].values() for p in r["length"]}
    )
    batches = sorted({p["batch"] for r in result["methods"].values() for p in r["batch"]})
    for ax, ticks in ((axes[0], lengths), (axes[1], lengths), (axes[2], batches)):
        if ticks:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{v:g}" for v in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"training step scaling ({result['device']}, {result['cpu_count']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="wav2vec2,eat", help=f"comma-separated, of {sorted(METHODS)}")
    p.add_argument("--seconds", default="2.5,5,10,20,40", help="clip lengths of the length sweep ('' : none)")
    p.add_argument("--length-batch", type=int, default=1, help="clips per step in the length sweep")
    p.add_argument("--batches", default="1,2,4,8", help="batch sizes of the batch sweep ('' : none)")
    p.add_argument("--batch-seconds", type=float, default=10.0, help="clip length in the batch sweep")
    p.add_argument("--steps", type=int, default=3, help="steps per point (the first is dropped)")
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides a.b=value for every method")
    p.add_argument("--out", default=os.path.join(HERE, "results", "scaling.json"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--replot", metavar="JSON", help="only draw the PNG of an earlier run's JSON (next to it)")
    a = p.parse_args(argv)
    if a.replot:
        result = json.load(open(a.replot))
        png = os.path.splitext(a.replot)[0] + ".png"
        plot(result, png)
        print(f"wrote {png}")
        return result
    names = [m for m in a.methods.split(",") if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f"--methods: {unknown[0]!r} is not one of {sorted(METHODS)}")
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is dropped)")
    seconds, batches = _floats(a.seconds), [int(b) for b in _floats(a.batches)]
    import jax

    result = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "length_batch": a.length_batch,
        "batch_seconds": a.batch_seconds,
        "steps": a.steps,
        "methods": {},
    }
    for name in names:
        spec, mel, multiple, overrides = METHODS[name]
        config = load_config(os.path.join(os.path.dirname(HERE), spec), [*overrides, *a.override])
        length = [measure(config, a.length_batch, frames_for(s, multiple), mel, a.steps) for s in seconds]
        if length:
            annotate(length, "seconds")
            share = quadratic_share([p["seconds"] for p in length], [p["gflop_per_step"] for p in length])
            for pt, q in zip(length, share or []):
                pt["quadratic_share"] = q
            print_table(f"{name} ({spec}): clip length, batch {a.length_batch}", length, "seconds")
        frames = frames_for(a.batch_seconds, multiple)
        batch = [measure(config, b, frames, mel, a.steps) for b in batches]
        if batch:
            annotate(batch, "batch")
            print_table(f"{name} ({spec}): batch size, {frames / FRAMES_PER_SECOND:g} s clips", batch, "batch")
        result["methods"][name] = {
            "config": spec,
            "overrides": overrides + a.override,
            "length": length,
            "batch": batch,
        }
    result["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {a.out}")
    if not a.no_plot:
        png = os.path.splitext(a.out)[0] + ".png"
        plot(result, png)
        print(f"wrote {png}")
    return result


if __name__ == "__main__":
    main()
