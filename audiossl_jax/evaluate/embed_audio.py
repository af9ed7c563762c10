"""`audiossl embed`: audio files (one file, a folder or a CSV) -> clip and frame embeddings in a .npz.

    audiossl embed --workdir runs/mine --input my_audio/ --out my_audio.npz

The .npz holds, for the n inputs that decoded (in listing order):

    clip_ids [n] str, paths [n] str, labels [n] str (';'-joined names, '' if none), durations [n] s
    clip [n, D] float32                       the clip embedding (`objective.embed(...)["clip"]`)
    frames [F, D] float32                     frame embeddings of all inputs, concatenated
    frame_times [F] float64                   centre of each frame in seconds from the input's start
    frame_offsets [n + 1] int64               input i's frames are frames[frame_offsets[i]:frame_offsets[i+1]]
    skipped_paths, skipped_reasons [k] str    inputs that could not be read, and why
    step, window_frames, window_seconds, frame_stride, frame_hop_seconds, frontend (JSON), workdir, random_init

Embedding (front end, normalisation, windows of long files): `evaluate/encoder.py`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from audiossl_jax.data import audio_io, sources
from audiossl_jax.evaluate import encoder as encoder_lib


def list_clips(input_path: str) -> tuple[list[sources.Clip], list[sources.Skipped]]:
    """One audio file, every audio file below a folder, or the rows of a CSV/TSV/AudioSet listing."""
    if os.path.isfile(input_path) and input_path.lower().endswith(sources.AUDIO_EXTENSIONS):
        return [sources.Clip(os.path.basename(input_path), input_path, ())], []
    listing = sources.list_inputs(input_path)
    return listing.clips, listing.skipped


def run(
    workdir: str,
    input_path: str,
    out: str,
    *,
    random_init: bool = False,
    window_seconds: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Embeds every input of `input_path` with the run's encoder and writes `out` (.npz); returns the
    arrays written."""
    from tqdm.auto import tqdm

    clips, skipped = list_clips(input_path)
    if not clips:
        raise ValueError(
            f"--input {input_path!r}: no audio to embed"
            + (f" ({len(skipped)} skipped: {skipped[0].reason})" if skipped else "")
        )
    enc = encoder_lib.FrozenEncoder.load(
        workdir, random_init=random_init, window_seconds=window_seconds, batch_size=batch_size
    )
    kept: list[tuple[sources.Clip, float]] = []
    skipped = [(s.input, s.reason) for s in skipped]

    def features():
        for clip in clips:
            try:
                wave, duration = audio_io.load_audio(clip.path)
            except audio_io.BadAudio as e:
                skipped.append((clip.path, str(e)))
                continue
            kept.append((clip, duration))
            yield enc.features(wave)

    bar = tqdm(total=len(clips), desc="embed", unit="file", disable=not progress)
    results = list(enc.embed_features(features(), progress=bar))
    bar.close()
    for path, reason in skipped:
        log(f"embed: skipped {path}: {reason}")
    if not results:
        raise ValueError(f"--input {input_path!r}: none of the {len(clips)} inputs could be read")
    lengths = [len(r.times) for r in results]
    arrays = {
        "clip_ids": np.array([c.clip_id for c, _ in kept]),
        "paths": np.array([c.path for c, _ in kept]),
        "labels": np.array([";".join(c.labels) for c, _ in kept]),
        "durations": np.array([d for _, d in kept], np.float64),
        "clip": np.stack([r.clip for r in results]),
        "frames": np.concatenate([r.frames for r in results]),
        "frame_times": np.concatenate([r.times for r in results]),
        "frame_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "skipped_paths": np.array([p for p, _ in skipped], dtype=str),
        "skipped_reasons": np.array([r for _, r in skipped], dtype=str),
        "step": np.int64(enc.step),
        "window_frames": np.int64(enc.window),
        "window_seconds": np.float64(enc.window / enc.frontend.frame_rate),
        "frame_stride": np.int64(enc.stride),
        "frame_hop_seconds": np.float64(enc.stride / enc.frontend.frame_rate),
        "frontend": np.array(json.dumps(enc.frontend.params, sort_keys=True)),
        "workdir": np.array(workdir),
        "random_init": np.bool_(random_init),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return arrays
