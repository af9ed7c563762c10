"""Reading one audio file as 16 kHz mono float32, with every way it can be bad named.

A local path is read by libsndfile directly; a URL (`gs://`, `ram://`) is fetched whole into memory
through `tf.io.gfile` first (a 10 s clip is well under 2 MB).
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import soundfile as sf
import soxr

from audiossl_jax.data import fileio

TARGET_RATE = 16000
# Containers whose header frame count is exact (MP3/Ogg counts can be estimates: not checked).
_EXACT_FRAME_COUNT = ("WAV", "WAVEX", "W64", "RF64", "AIFF", "AU", "FLAC", "CAF")


class _Fetched(io.BytesIO):
    """A remote file's bytes; repr() is its path, so libsndfile's messages name the file."""

    def __init__(self, path: str):
        super().__init__(fileio.read_bytes(path))
        self.path = path

    def __repr__(self) -> str:
        return repr(self.path)


def _wav_truncation(path) -> str | None:
    """A reason if a RIFF/WAVE file holds fewer audio bytes than its `data` chunk declares, else None.

    libsndfile reads a truncated WAV silently, as the few frames that are there (its `info.frames`
    is already shrunk to them), so the header is checked here."""
    try:
        if isinstance(path, _Fetched):
            data = path.getvalue()
            size, f = len(data), io.BytesIO(data)
        else:
            size, f = os.path.getsize(path), open(path, "rb")
        with f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            endian = "<" if head[:4] == b"RIFF" else ">"
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, chunk_size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
                if chunk_id == b"data":
                    present = size - f.tell()
                    if chunk_size != 0xFFFFFFFF and chunk_size > present:  # 0xFFFFFFFF: streamed, unknown
                        return (
                            f"truncated file: the WAV header declares {chunk_size} bytes of audio, "
                            f"the file holds {present}"
                        )
                    return None
                f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)
    except (OSError, struct.error):
        return None


class BadAudio(Exception):
    """The file cannot become an example; the message is the reason recorded in the manifest."""


def load_audio(path: str, *, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Returns (waveform float32 [samples] at 16 kHz mono, original duration in seconds).

    Multi-channel audio is averaged to mono; other rates are resampled with soxr (HQ). With
    `max_seconds` only the first `max_seconds` are read. Raises BadAudio for unreadable files,
    unsupported formats, truncated files, empty audio, and NaN/inf samples.
    """
    try:
        if fileio.is_remote(path):
            path = _Fetched(path)
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for bad files
        raise BadAudio(f"unreadable audio ({type(e).__name__}: {e})") from e
    rate = int(info.samplerate)
    if rate <= 0:
        raise BadAudio(f"invalid sample rate {rate}")
    truncated = _wav_truncation(path) if info.format == "WAV" else None
    if truncated:
        raise BadAudio(truncated)
    frames = -1 if max_seconds is None else int(np.ceil(max_seconds * rate))
    if isinstance(path, _Fetched):
        path.seek(0)
    try:
        data, rate = sf.read(path, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise BadAudio(f"cannot decode audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise BadAudio("empty audio (0 samples)")
    wanted = info.frames if frames < 0 else min(frames, info.frames)
    if info.format in _EXACT_FRAME_COUNT and 0 < data.shape[0] < wanted:
        raise BadAudio(f"truncated file: {info.frames} frames declared, {data.shape[0]} decoded")
    if not np.all(np.isfinite(data)):
        raise BadAudio("NaN or inf samples")
    duration = float(info.frames) / rate if info.frames > 0 else data.shape[0] / rate
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != TARGET_RATE:
        wave = soxr.resample(wave, rate, TARGET_RATE, quality="HQ")
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * TARGET_RATE))]
    return np.ascontiguousarray(wave, dtype=np.float32), duration
