"""Kaldi-compatible log mel filterbank ("fbank") in vectorised numpy.

Matches `torchaudio.compliance.kaldi.fbank` (the front end of AST and EAT) for `dither=0`,
`use_energy=False`, `snip_edges=True`, no VTLN: frames of 25 ms every 10 ms, DC offset removed
per frame, pre-emphasis 0.97 (first sample replicated), Povey window, zero-padded to a power of
two, power spectrum, triangular filters on Kaldi's mel scale (1127 ln(1 + f/700)) from 20 Hz to
Nyquist, log with a floor of float32 eps. The waveform is expected in [-1, 1] (as
`torchaudio.load` returns it), not scaled to int16 range.
"""

from __future__ import annotations

import functools

import numpy as np

from audiossl_jax.features import blas

WINDOW_TYPES = ("povey", "hanning", "hamming", "rectangular", "blackman")
_LOG_FLOOR = np.finfo(np.float32).eps


def _mel(freq):
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


def _mel_inverse(mel):
    return 700.0 * (np.exp(np.asarray(mel, np.float64) / 1127.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_banks(
    num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float, high_freq: float
) -> np.ndarray:
    """Kaldi triangular mel filters, float32 [padded_window_size // 2 + 1, num_bins]."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"need 0 <= low_freq ({low_freq}) < high_freq ({high_freq}) <= Nyquist ({nyquist})")
    num_fft_bins = padded_window_size // 2
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(sample_rate / padded_window_size * np.arange(num_fft_bins))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # [num_bins, num_fft_bins]
    banks = np.pad(banks, ((0, 0), (0, 1)))  # Kaldi leaves the Nyquist bin out
    return np.ascontiguousarray(banks.T.astype(np.float32))


@functools.lru_cache(maxsize=16)
def window(window_type: str, size: int) -> np.ndarray:
    """Symmetric analysis windows as Kaldi defines them, float32 [size]."""
    n = np.arange(size, dtype=np.float64)
    a = 2 * np.pi / (size - 1)
    if window_type == "povey":
        w = (0.5 - 0.5 * np.cos(a * n)) ** 0.85
    elif window_type == "hanning":
        w = 0.5 - 0.5 * np.cos(a * n)
    elif window_type == "hamming":
        w = 0.54 - 0.46 * np.cos(a * n)
    elif window_type == "rectangular":
        w = np.ones(size)
    elif window_type == "blackman":
        w = 0.42 - 0.5 * np.cos(a * n) + 0.08 * np.cos(2 * a * n)
    else:
        raise ValueError(f"window_type={window_type!r} is not one of {WINDOW_TYPES}")
    return w.astype(np.float32)


def frame_sizes(sample_rate: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    """(window_size, window_shift) in samples, as Kaldi rounds them."""
    return int(sample_rate * frame_length_ms * 0.001), int(sample_rate * frame_shift_ms * 0.001)


def num_frames(num_samples: int, window_size: int, window_shift: int) -> int:
    """Frames produced with snip_edges=True (0 when the signal is shorter than one window)."""
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def kaldi_fbank(
    waveform: np.ndarray,
    *,
    sample_rate: float = 16000.0,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    window_type: str = "povey",
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    round_to_power_of_two: bool = True,
) -> np.ndarray:
    """Log mel filterbank of a mono waveform [samples] -> float32 [frames, num_mel_bins]."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform [samples], got shape {x.shape}")
    size, shift = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    padded = 1 << (size - 1).bit_length() if round_to_power_of_two else size
    n = num_frames(x.shape[0], size, shift)
    if n == 0:
        return np.zeros((0, num_mel_bins), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::shift][:n]
    buf = np.zeros((n, padded), np.float32)
    body = buf[:, :size]
    body[:] = frames
    if remove_dc_offset:
        body -= body.mean(axis=1, keepdims=True)
    if preemphasis != 0.0:
        previous = body[:, :-1].copy()  # x[j-1]; Kaldi replicates x[0] before the frame
        body[:, 0] *= 1.0 - preemphasis
        body[:, 1:] -= preemphasis * previous
    body *= window(window_type, size)
    spectrum = np.fft.rfft(buf, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    energies = blas.matmul(
        power.astype(np.float32), mel_banks(num_mel_bins, padded, float(sample_rate), float(low_freq), float(high_freq))
    )
    return np.log(np.maximum(energies, _LOG_FLOOR))
