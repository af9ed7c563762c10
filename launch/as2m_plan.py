"""The AudioSet-2M recipe at scale, printed (runs nothing): prep on Dataflow, then each paper config on
its slice, with steps per epoch, wall time, checkpoint cadence and what a preemption costs.

    .venv/bin/python launch/as2m_plan.py [--clips 2000000] [--bucket gs://B] [--project P]
        [--step-seconds configs/eat.py:base=S ...]      # measured on the target (bench/gpu_suite.py)

Wall times use only measured step times: the built-in one is SLICER `paper` on one H100 (19.6 ms
per bf16 step at batch 512, bench/RESULTS.md); other rows say "not measured" until given
`--step-seconds`. The printed commands are dry runs themselves: `audiossl prep --dry-run` prints the
shards and expected hours, `launch/tpu_vm.sh --dry-run` the gcloud commands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# config -> (where it runs, hosts, chips, mesh, launcher); the slice holds the config's global batch
# at >= 1 clip per chip and, at that per-chip batch, the step fits memory (docs/scaling.md table).
SLICES = {
    "configs/wav2vec2_conformer.py:S": ("TPU v5litepod-8", 1, 8, "(8,1,1)", "tpu"),
    "configs/wav2vec2_conformer.py:L": ("TPU v5litepod-8", 1, 8, "(8,1,1)", "tpu"),
    "configs/eat.py:base": ("TPU v4-32", 4, 16, "(16,1,1)", "tpu"),
    "configs/eat.py:large": ("TPU v4-32", 4, 16, "(4,4,1)", "tpu"),
    "configs/slicer.py:paper": ("1 x H100", 1, 1, "(1,1,1)", "gpu"),
}
MEASURED_STEP_SECONDS = {"configs/slicer.py:paper": 0.0196}  # H100, bf16 (bench/RESULTS.md)
RAW_RECORDS_PER_CPU_SECOND = 3326  # raw TFRecord read + parse, bench/results/bench_pipeline.json


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def row(config_name: str, config, clips: int, step_seconds: float | None) -> dict:
    """One config's numbers: pure arithmetic on the config, the clip count and a step time."""
    where, hosts, chips, mesh, _ = SLICES[config_name]
    batch, steps, every = int(config.data.batch_size), int(config.train.steps), int(config.train.ckpt_every)
    out = {
        "config": config_name,
        "where": where,
        "hosts": hosts,
        "chips": chips,
        "mesh": mesh,
        "batch": batch,
        "clips_per_chip": batch / chips,
        "steps": steps,
        "steps_per_epoch": clips // batch,
        "epochs": steps * batch / clips,
        "ckpt_every": every,
        "resume_skip_cpu_s": clips / hosts / RAW_RECORDS_PER_CPU_SECOND,
    }
    if step_seconds is not None:
        out.update(wall_s=steps * step_seconds, lost_on_kill_s=every * step_seconds)
    return out


def lines(rows: list[dict]) -> list[str]:
    text = []
    for r in rows:
        wall = (
            f"{_hours(r['wall_s'])} ({r['steps']:,} steps at the measured step time)"
            if "wall_s" in r
            else "not measured (pass --step-seconds CONFIG=S measured on the target)"
        )
        lost = (
            f"<= {_hours(r['lost_on_kill_s'])} of steps" if "lost_on_kill_s" in r else f"<= {r['ckpt_every']:,} steps"
        )
        text += [
            f"{r['config']}: {r['where']} ({r['hosts']} host(s), {r['chips']} chip(s)), mesh {r['mesh']}, "
            f"batch {r['batch']} ({r['clips_per_chip']:g} per chip)",
            f"  {r['steps_per_epoch']:,} steps per epoch; {r['steps']:,} steps = {r['epochs']:.2f} epochs; "
            f"wall time: {wall}",
            f"  checkpoint every {r['ckpt_every']:,} steps; preemption with notice (SIGTERM): checkpoint, "
            f"no steps lost; without notice: {lost}; on resume each host skips <= "
            f"{r['resume_skip_cpu_s']:,.0f} CPU-s of raw records",
        ]
    return text


def commands(args, rows: list[dict]) -> list[str]:
    b = args.bucket
    prep = [
        ".venv/bin/audiossl",
        "prep",
        "--input",
        f"{b}/audioset/unbalanced_train_segments.csv",
        "--audio-dir",
        f"{b}/audioset/audio",
        "--out",
        f"{b}/as2m/{{frontend}}/train",
        "--runner",
        "dataflow",
        "--dry-run",
        "--",
        f"--project={args.project}",
        "--region=us-central1",
        f"--temp_location={b}/tmp",
        "--setup_file=./setup.py",
        "--num_workers=8",
        "--machine_type=n2-standard-4",
    ]
    out = ["# 1. prep (once per front end; drop --dry-run to run it):"]
    for frontend, extra in (
        ("kaldi_fbank", ["--frontend", "kaldi_fbank", "--window-type", "hanning"]),
        ("librosa_mel", ["--frontend", "librosa_mel", "--num-mel-bins", "64"]),
    ):
        out.append(shlex.join([a.format(frontend=frontend) for a in prep[:8]] + extra + prep[8:]))
    out.append("# 2. pre-train (drop --dry-run to run it):")
    for r in rows:
        frontend = "kaldi_fbank" if "eat.py" in r["config"] else "librosa_mel"
        name = os.path.basename(r["config"]).replace(".py:", "-").replace("_", "-")
        data = f"--config.data.train_dir={b}/as2m/{frontend}/train"
        if SLICES[r["config"]][4] == "gpu":
            out.append(
                shlex.join(
                    ["launch/gpu.sh", "--config", r["config"], "--workdir", f"{b}/runs/{name}", "--dry-run", "--", data]
                )
            )
        else:
            kind = r["where"].split()[-1]
            out.append(
                shlex.join(
                    [
                        "launch/tpu_vm.sh",
                        "--name",
                        name,
                        "--zone",
                        args.zone,
                        "--accelerator-type",
                        kind,
                        "--spot",
                        "--config",
                        r["config"],
                        "--workdir",
                        f"{b}/runs/{name}",
                        "--dry-run",
                        "all",
                        "--",
                        data,
                        f"--config.mesh.shape={r['mesh']}",
                    ]
                )
            )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2_000_000, help="clips in the training split")
    parser.add_argument("--bucket", default="gs://BUCKET")
    parser.add_argument("--project", default="PROJECT")
    parser.add_argument("--zone", default="us-central2-b")
    parser.add_argument(
        "--step-seconds",
        action="append",
        default=[],
        metavar="CONFIG=S",
        help="a measured step time, e.g. configs/eat.py:base=0.41",
    )
    args = parser.parse_args(argv)
    from audiossl_jax.config_loader import load_config
    from audiossl_jax.data.prep import default_num_shards

    measured = dict(MEASURED_STEP_SECONDS)
    for item in args.step_seconds:
        name, _, value = item.rpartition("=")
        if name not in SLICES:
            parser.error(f"--step-seconds {item!r}: config must be one of {sorted(SLICES)}")
        measured[name] = float(value)
    rows = [row(name, load_config(os.path.join(REPO, name)), args.clips, measured.get(name)) for name in SLICES]
    print(f"AudioSet-2M: {args.clips:,} clips -> {default_num_shards(args.clips)} shards (prep's default)")
    print("\n".join(lines(rows) + commands(args, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
