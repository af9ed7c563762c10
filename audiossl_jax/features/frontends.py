"""Feature front ends chosen by name: waveform (16 kHz mono float32) -> log-mel [frames, mel].

* `kaldi_fbank`: Kaldi-compatible fbank as AST/EAT use it (128 bins, 25 ms / 10 ms, Povey window).
* `librosa_mel`: librosa-style log-mel as BYOL-A/SLICER and the conformer use it (64 bins,
  n_fft 1024, hop 160, 60-7800 Hz).

A `Frontend` is a small frozen dataclass (picklable, so prep workers receive it) whose `params`
are written to the prepared data's manifest.json; `frontend_from_params` rebuilds it from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from audiossl_jax.features import kaldi_fbank, log_mel

SAMPLE_RATE = 16000

_DEFAULTS: dict[str, dict[str, Any]] = {
    "kaldi_fbank": dict(
        num_mel_bins=128,
        frame_length_ms=25.0,
        frame_shift_ms=10.0,
        preemphasis=0.97,
        remove_dc_offset=True,
        window_type="povey",
        low_freq=20.0,
        high_freq=0.0,
        round_to_power_of_two=True,
    ),
    "librosa_mel": dict(
        num_mel_bins=64,
        n_fft=1024,
        hop_length=160,
        win_length=None,
        fmin=60.0,
        fmax=7800.0,
        log_offset=log_mel.DEFAULT_LOG_OFFSET,
    ),
}
FRONTENDS = tuple(_DEFAULTS)


@dataclasses.dataclass(frozen=True)
class Frontend:
    """A named front end with its full parameter set."""

    name: str  # one of FRONTENDS
    options: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs, complete

    @property
    def params(self) -> dict[str, Any]:
        """JSON-serialisable description (name, sample_rate and every option)."""
        return {"name": self.name, "sample_rate": SAMPLE_RATE, **dict(self.options)}

    @property
    def num_mel_bins(self) -> int:
        return int(dict(self.options)["num_mel_bins"])

    @property
    def frame_rate(self) -> float:
        """Frames per second of audio."""
        o = dict(self.options)
        hop = o["hop_length"] if self.name == "librosa_mel" else SAMPLE_RATE * o["frame_shift_ms"] / 1000
        return SAMPLE_RATE / hop

    def min_samples(self) -> int:
        """Fewest samples that give at least one frame."""
        if self.name == "kaldi_fbank":
            o = dict(self.options)
            return kaldi_fbank.frame_sizes(SAMPLE_RATE, o["frame_length_ms"], o["frame_shift_ms"])[0]
        return 1

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [samples] at 16 kHz -> float32 [frames, num_mel_bins]."""
        options = dict(self.options)
        if self.name == "kaldi_fbank":
            return kaldi_fbank.kaldi_fbank(waveform, sample_rate=SAMPLE_RATE, **options)
        return log_mel.log_mel(waveform, sample_rate=SAMPLE_RATE, **options)


def make_frontend(name: str, **overrides: Any) -> Frontend:
    """The front end `name` with its defaults, updated by `overrides` (None values are ignored)."""
    if name not in _DEFAULTS:
        raise ValueError(f"frontend={name!r} is not one of {FRONTENDS}")
    options = dict(_DEFAULTS[name])
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in options:
            raise ValueError(f"unknown option {key!r} for frontend {name!r}; options: {sorted(options)}")
        options[key] = value
    if name == "kaldi_fbank" and options["window_type"] not in kaldi_fbank.WINDOW_TYPES:
        raise ValueError(f"window_type={options['window_type']!r} is not one of {kaldi_fbank.WINDOW_TYPES}")
    if int(options["num_mel_bins"]) <= 0:
        raise ValueError(f"num_mel_bins must be positive, got {options['num_mel_bins']}")
    return Frontend(name, tuple(sorted(options.items())))


def frontend_from_config(declared) -> Frontend:
    """The front end a method's config declares in `config.data.frontend` ({name, option: value});
    errors name the field."""
    options = dict(declared or {})
    name = options.pop("name", None)
    if not name:
        raise ValueError("config.data.frontend declares no front end (it needs a `name`)")
    try:
        return make_frontend(name, **options)
    except ValueError as e:
        raise ValueError(f"config.data.frontend: {e}") from None


def frontend_from_params(params: dict[str, Any]) -> Frontend:
    """Inverse of `Frontend.params` (e.g. from a manifest.json)."""
    params = dict(params)
    name = params.pop("name")
    rate = params.pop("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"front end sample_rate={rate}; only {SAMPLE_RATE} is supported")
    return make_frontend(name, **params)
