"""The HEAR 2021 API (hear-eval-kit's `--model` module) over a pre-training workdir.

    import audiossl_jax.hear as hear
    model = hear.load_model("runs/mine")                          # a `audiossl pretrain` --workdir
    scene = hear.get_scene_embeddings(audio, model)               # [n, scene_embedding_size]
    frames, ms = hear.get_timestamp_embeddings(audio, model)      # [n, T, timestamp_embedding_size], [n, T]

`audio` is [n, samples] at `model.sample_rate` (16 kHz), values in [-1, 1]: a numpy array or a torch
tensor; the results are of the same kind (torch tensors on the input's device; torch is imported only
when it is given one). Scene embeddings are the run's clip embeddings, timestamp embeddings its frame
embeddings, with timestamps in milliseconds (frame centres); both are computed exactly as
`audiossl embed` computes them (the run's front end and normalisation, windows of the probe window for
long audio: `audiossl_jax/evaluate/encoder.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audiossl_jax.evaluate import encoder as encoder_lib

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


class HearModel:
    """A frozen encoder with the attributes the HEAR runner reads."""

    sample_rate = encoder_lib.frontends.SAMPLE_RATE

    def __init__(self, encoder: encoder_lib.FrozenEncoder):
        self.encoder = encoder
        self.scene_embedding_size = encoder.embedding_size
        self.timestamp_embedding_size = encoder.frame_embedding_size


def load_model(
    model_file_path: str = "", *, random_init: bool = False, window_seconds: float | None = None
) -> HearModel:
    """The latest checkpoint of the pre-training workdir `model_file_path`."""
    if not model_file_path:
        raise ValueError("load_model needs the --workdir of an `audiossl pretrain` run as model_file_path")
    return HearModel(
        encoder_lib.FrozenEncoder.load(model_file_path, random_init=random_init, window_seconds=window_seconds)
    )


def _to_numpy(audio: Any) -> tuple[np.ndarray, Any]:
    """(float32 [n, samples], the torch device or None for numpy input)."""
    device = None
    if type(audio).__module__.split(".")[0] == "torch":
        device = audio.device
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples], got shape {audio.shape}")
    return audio, device


def _like(x: np.ndarray, device: Any) -> Any:
    if device is None:
        return x
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _embed(audio: Any, model: HearModel) -> tuple[list, Any]:
    waves, device = _to_numpy(audio)
    return list(model.encoder.embed_waves(list(waves))), device


def get_scene_embeddings(audio: Any, model: HearModel) -> Any:
    """[n, samples] -> float32 [n, model.scene_embedding_size]."""
    results, device = _embed(audio, model)
    clips = np.stack([r.clip for r in results]) if results else np.zeros((0, model.scene_embedding_size))
    return _like(clips.astype(np.float32), device)


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[Any, Any]:
    """[n, samples] -> (float32 [n, T, model.timestamp_embedding_size], float32 timestamps [n, T] in
    milliseconds, the centre of each frame). Every row has the same length, so the same T."""
    results, device = _embed(audio, model)
    if not results:
        return (
            _like(np.zeros((0, 0, model.timestamp_embedding_size), np.float32), device),
            _like(np.zeros((0, 0), np.float32), device),
        )
    frames = np.stack([r.frames for r in results]).astype(np.float32)
    times = (np.stack([r.times for r in results]) * 1000.0).astype(np.float32)
    return _like(frames, device), _like(times, device)
