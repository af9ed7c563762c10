"""Reading one audio file as 16 kHz mono float32, with every way it can be bad named."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

TARGET_RATE = 16000


class BadAudio(Exception):
    """The file cannot become an example; the message is the reason recorded in the manifest."""


def load_audio(path: str, *, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Returns (waveform float32 [samples] at 16 kHz mono, original duration in seconds).

    Multi-channel audio is averaged to mono; other rates are resampled with soxr (HQ). With
    `max_seconds` only the first `max_seconds` are read. Raises BadAudio for unreadable files,
    unsupported formats, empty audio, and NaN/inf samples.
    """
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for bad files
        raise BadAudio(f"unreadable audio ({type(e).__name__}: {e})") from e
    rate = int(info.samplerate)
    if rate <= 0:
        raise BadAudio(f"invalid sample rate {rate}")
    frames = -1 if max_seconds is None else int(np.ceil(max_seconds * rate))
    try:
        data, rate = sf.read(path, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise BadAudio(f"cannot decode audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise BadAudio("empty audio (0 samples)")
    if not np.all(np.isfinite(data)):
        raise BadAudio("NaN or inf samples")
    duration = float(info.frames) / rate if info.frames > 0 else data.shape[0] / rate
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != TARGET_RATE:
        wave = soxr.resample(wave, rate, TARGET_RATE, quality="HQ")
    if max_seconds is not None:
        wave = wave[:int(round(max_seconds * TARGET_RATE))]
    return np.ascontiguousarray(wave, dtype=np.float32), duration
