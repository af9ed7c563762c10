"""librosa-style log mel spectrogram (the BYOL-A / SLICER / conformer front end) in numpy.

Equal to `log(librosa.feature.melspectrogram(y, sr, n_fft, hop_length, win_length, n_mels, fmin,
fmax) + log_offset)` with librosa's defaults: centred frames (zero padding of n_fft // 2 on both
sides), periodic Hann window, power spectrum, Slaney-normalised mel filters on the Slaney mel scale.
The filters come from `librosa.filters.mel`; framing and the FFT are done here, vectorised.
"""

from __future__ import annotations

import functools

import numpy as np

from audiossl_jax.features import blas

DEFAULT_LOG_OFFSET = float(np.finfo(np.float32).eps)  # BYOL-A: (x + torch.finfo().eps).log()


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool = False) -> np.ndarray:
    """librosa's mel filterbank, float32 [n_fft // 2 + 1, n_mels]."""
    import librosa  # deferred: librosa's import is slow and only this needs it

    banks = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm="slaney", dtype=np.float32
    )
    return np.ascontiguousarray(banks.T)


@functools.lru_cache(maxsize=16)
def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of `win_length`, zero-padded (centred) to `n_fft`, float32."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left)).astype(np.float32)


def num_frames(num_samples: int, hop_length: int) -> int:
    """Frames produced by a centred STFT."""
    return 1 + num_samples // hop_length


def log_mel(
    waveform: np.ndarray,
    *,
    sample_rate: float = 16000.0,
    n_fft: int = 1024,
    hop_length: int = 160,
    win_length: int | None = None,
    num_mel_bins: int = 64,
    fmin: float = 60.0,
    fmax: float = 7800.0,
    log_offset: float = DEFAULT_LOG_OFFSET,
) -> np.ndarray:
    """Log mel spectrogram of a mono waveform [samples] -> float32 [frames, num_mel_bins]."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel expects a mono waveform [samples], got shape {x.shape}")
    win_length = n_fft if win_length is None else win_length
    if not 0 < win_length <= n_fft:
        raise ValueError(f"need 0 < win_length ({win_length}) <= n_fft ({n_fft})")
    padded = np.pad(x, n_fft // 2)
    n = num_frames(x.shape[0], hop_length)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:n]
    spectrum = np.fft.rfft(frames * hann_window(win_length, n_fft), axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = blas.matmul(power, mel_filters(float(sample_rate), n_fft, num_mel_bins, float(fmin), float(fmax)))
    return np.log(mel + np.float32(log_offset))
