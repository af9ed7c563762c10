"""`audiossl prep --dry-run`: what a run would write and how long it should take, from measured rates.

The rate is CPU time per second of audio measured on the 2-core development machine
(`bench/bench_beam_prep.py`, `bench/results/bench_beam_prep.json`): 10 s 44.1 kHz stereo FLAC clips
(as AudioSet is usually stored) -> 128-bin fbank shards, the whole Beam DirectRunner pipeline
(decode, resample, features, shuffles, writing), marginal CPU per clip. Cloud workers' CPUs differ:
treat the hours as a first estimate and compare with the first minutes of the real job.
"""

from __future__ import annotations

import math
import re

# x realtime per CPU, Beam DirectRunner end to end: bench/results/bench_beam_prep.json (128 clips,
# 2 shared cores at load 14; two 64-clip runs gave 351 and 247).
BEAM_X_REALTIME_PER_CPU = 354.0
SAMPLED_HEADERS = 64


def mean_clip_seconds(paths: list[str], max_seconds: float | None, min_seconds: float) -> tuple[float | None, int, int]:
    """(mean duration after pad/crop, headers read, headers tried) over up to SAMPLED_HEADERS clips
    spread over the listing (only their headers are decoded); the mean is None if none reads."""
    import soundfile as sf

    from audiossl_jax.data import audio_io, fileio

    step = max(1, len(paths) // SAMPLED_HEADERS)
    sampled, seconds = paths[::step][:SAMPLED_HEADERS], []
    for path in sampled:
        try:
            info = sf.info(audio_io._Fetched(path) if fileio.is_remote(path) else path)
        except Exception:  # noqa: BLE001 - a bad file is skipped by prep too
            continue
        s = info.frames / info.samplerate
        seconds.append(max(min(s, max_seconds or s), min_seconds))
    return (sum(seconds) / len(seconds) if seconds else None), len(seconds), len(sampled)


def cpus_from_beam_args(runner: str, beam_args: list[str], workers: int) -> tuple[int | None, str]:
    """(CPUs the job runs on, how that was found): the direct runner's worker processes, or
    `--num_workers`/`--max_num_workers` x the vCPUs of `--machine_type` (e.g. n2-standard-8 -> 8)."""
    if runner == "direct":
        return workers, f"{workers} local worker processes"
    opts = dict(arg.lstrip("-").split("=", 1) for arg in beam_args if arg.startswith("--") and "=" in arg)
    count = opts.get("num_workers") or opts.get("max_num_workers")
    machine = re.search(r"-(\d+)$", opts.get("machine_type", ""))
    if count is None or machine is None:
        return None, "pass --num_workers=N and --machine_type=TYPE-VCPUS (after --) for a wall-time estimate"
    return int(count) * int(machine.group(1)), f"{count} workers x {machine.group(1)} vCPUs ({opts['machine_type']})"


def report(
    num_clips: int,
    num_listing_skipped: int,
    num_shards: int,
    clip_seconds: float | None,
    cpus: int | None,
    cpus_how: str,
    rate: float,
    sampled: str = "",
) -> list[str]:
    """The dry-run lines: counts, shards, audio hours, CPU-hours and wall hours at `rate`."""
    per_shard = math.ceil(num_clips / max(num_shards, 1))
    lines = [
        f"prep dry run: {num_clips} clips to prepare ({num_listing_skipped} inputs skipped while "
        f"listing) -> {num_shards} shards of <= {per_shard} clips"
    ]
    if clip_seconds is None:
        return lines + ["  no sampled clip could be read: no time estimate"]
    audio_h = num_clips * clip_seconds / 3600
    cpu_h = audio_h / rate
    lines += [
        f"  audio: {_span(audio_h)} (mean {clip_seconds:.2f} s{sampled})",
        f"  at {rate:.0f}x realtime per CPU (measured, Beam DirectRunner end to end on 44.1 kHz "
        f"stereo FLAC -> 128-bin fbank): {_span(cpu_h)} of CPU time",
    ]
    if cpus is None:
        return lines + [f"  wall time: {cpus_how}"]
    return lines + [
        f"  on {cpus} CPUs ({cpus_how}): {_span(cpu_h / cpus)} of processing, plus the "
        "runner's start-up and the driver's listing"
    ]


def _span(hours: float) -> str:
    return f"{hours:,.2f} h" if hours >= 1 else f"{hours * 60:,.1f} min"
