"""Built-in demo data: seeded, labelled clips of synthetic sound events, no download needed.

Each clip is coloured background noise with 1-3 events of distinct classes mixed in at random
onsets, pitches, durations and SNRs (-3..20 dB against the background). The ten classes overlap in
frequency range on purpose and several differ only in their temporal structure (a steady tone vs.
an AM, FM or beeping tone; an up vs. a down chirp; a sustained vs. a plucked harmonic stack), so a
probe on good frame-level features scores high while averaged random features do not.

Layout written under `out`::

    classes.txt            one class name per line (index = line number)
    train.csv, eval.csv    `path,labels` with labels joined by ';' and paths relative to the CSV
    train/*.wav, eval/*.wav  16 kHz mono PCM-16

The same (seed, split, clip index) always gives the same clip.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
DEFAULT_TRAIN = 400
DEFAULT_EVAL = 200
DEFAULT_SECONDS = 4.0
_SPLIT_IDS = {"train": 0, "eval": 1}


def _fade(n: int, seconds: float = 0.01) -> np.ndarray:
    k = max(1, min(n // 2, int(seconds * SAMPLE_RATE)))
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k))
    env[:k], env[n - k :] = ramp, ramp[::-1]
    return env


def _sine(freq: np.ndarray | float, n: int) -> np.ndarray:
    """Sine with instantaneous frequency `freq` (scalar or per sample), random phase 0."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(np.asarray(freq, np.float64), (n,))) / SAMPLE_RATE
    return np.sin(phase)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _seconds(rng: np.random.Generator, low: float, high: float) -> int:
    return int(rng.uniform(low, high) * SAMPLE_RATE)


def _tone(rng):
    n = _seconds(rng, 0.5, 2.0)
    return _sine(_log_uniform(rng, 250, 2500), n) * _fade(n)


def _chirp(rng, up: bool):
    n = _seconds(rng, 0.3, 1.2)
    f0 = _log_uniform(rng, 250, 700)
    f1 = f0 * rng.uniform(2.5, 6.0)
    freq = np.geomspace(f0, f1, n) if up else np.geomspace(f1, f0, n)
    return _sine(freq, n) * _fade(n)


def _noise_burst(rng):
    n = _seconds(rng, 0.1, 0.6)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    centre = _log_uniform(rng, 400, 4000)
    spectrum *= np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / centre) / 0.35) ** 2)
    return np.fft.irfft(spectrum, n) * _fade(n, 0.005)


def _click_train(rng):
    n = _seconds(rng, 0.5, 2.0)
    period = int(SAMPLE_RATE / rng.uniform(6, 40))
    click = np.exp(-np.arange(48) / 6.0) * rng.choice([-1, 1], 48)
    out = np.zeros(n)
    for start in range(0, n - click.size, period):
        out[start : start + click.size] += click
    return out


def _harmonics(rng, n: int, f0: float) -> np.ndarray:
    k = np.arange(1, int(rng.integers(4, 9)) + 1)
    k = k[k * f0 < 7000]
    return sum(_sine(f0 * h, n) / h for h in k)


def _harmonic_stack(rng):
    n = _seconds(rng, 0.4, 1.5)
    return _harmonics(rng, n, _log_uniform(rng, 110, 440)) * _fade(n)


def _am_tone(rng):
    n = _seconds(rng, 0.6, 2.0)
    t = np.arange(n) / SAMPLE_RATE
    env = 1 + 0.9 * np.sin(2 * np.pi * rng.uniform(4, 12) * t)
    return _sine(_log_uniform(rng, 250, 2500), n) * env * _fade(n)


def _fm_tone(rng):
    n = _seconds(rng, 0.6, 2.0)
    t = np.arange(n) / SAMPLE_RATE
    centre = _log_uniform(rng, 250, 2500)
    freq = centre * (1 + rng.uniform(0.04, 0.12) * np.sin(2 * np.pi * rng.uniform(3, 8) * t))
    return _sine(freq, n) * _fade(n)


def _beeps(rng):
    freq = _log_uniform(rng, 400, 3000)
    beep, gap = _seconds(rng, 0.05, 0.12), _seconds(rng, 0.05, 0.15)
    one = np.concatenate([_sine(freq, beep) * _fade(beep, 0.005), np.zeros(gap)])
    return np.tile(one, int(rng.integers(3, 7)))


def _pluck(rng):
    n = _seconds(rng, 0.4, 1.2)
    t = np.arange(n) / SAMPLE_RATE
    body = _harmonics(rng, n, _log_uniform(rng, 110, 800)) * np.exp(-t / rng.uniform(0.04, 0.2))
    return body * _fade(n, 0.002)


CLASSES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "tone": _tone,
    "chirp_up": lambda rng: _chirp(rng, up=True),
    "chirp_down": lambda rng: _chirp(rng, up=False),
    "noise_burst": _noise_burst,
    "click_train": _click_train,
    "harmonic_stack": _harmonic_stack,
    "am_tone": _am_tone,
    "fm_tone": _fm_tone,
    "beeps": _beeps,
    "pluck": _pluck,
}
CLASS_NAMES = tuple(CLASSES)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS noise with a random spectral tilt (white .. brown-ish)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    noise = np.fft.irfft(spectrum * freqs ** -rng.uniform(0.0, 1.0), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def make_clip(seed: int, split: str, index: int, seconds: float = DEFAULT_SECONDS) -> tuple[np.ndarray, list[str]]:
    """One clip (float32 [samples] in [-1, 1]) and its sorted label names; pure in its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    n = int(seconds * SAMPLE_RATE)
    clip = _background(rng, n) * _log_uniform(rng, 0.003, 0.03)
    background_rms = _rms(clip)
    num_events = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    first = index % len(CLASS_NAMES)  # every class appears in every split of >= 10 clips
    others = rng.permutation([c for c in range(len(CLASS_NAMES)) if c != first])
    labels = [first, *others[: num_events - 1].tolist()]
    for c in labels:
        event = CLASSES[CLASS_NAMES[c]](rng)[:n]
        event *= background_rms * 10 ** (rng.uniform(-3.0, 20.0) / 20) / _rms(event)
        onset = int(rng.integers(0, n - event.size + 1))
        clip[onset : onset + event.size] += event
    peak = np.max(np.abs(clip))
    if peak > 0.9:
        clip *= 0.9 / peak
    return clip.astype(np.float32), sorted(CLASS_NAMES[c] for c in labels)


def write_demo_data(
    out: str,
    *,
    num_train: int = DEFAULT_TRAIN,
    num_eval: int = DEFAULT_EVAL,
    seed: int = 0,
    seconds: float = DEFAULT_SECONDS,
) -> dict[str, str]:
    """Writes the demo data set under `out`; returns {'train': csv, 'eval': csv, 'classes': txt}."""
    if num_train < 0 or num_eval < 0 or seconds <= 0:
        raise ValueError(f"need num_train, num_eval >= 0 and seconds > 0; got {num_train}, {num_eval}, {seconds}")
    os.makedirs(out, exist_ok=True)
    paths = {"classes": os.path.join(out, "classes.txt")}
    with open(paths["classes"], "w") as f:
        f.write("".join(name + "\n" for name in CLASS_NAMES))
    for split, count in (("train", num_train), ("eval", num_eval)):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        rows = []
        for i in range(count):
            audio, labels = make_clip(seed, split, i, seconds)
            rel = f"{split}/{split}_{i:06d}.wav"
            sf.write(os.path.join(out, rel), audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append((rel, ";".join(labels)))
        paths[split] = os.path.join(out, f"{split}.csv")
        tmp = paths[split] + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels"])
            writer.writerows(rows)
        os.replace(tmp, paths[split])
    return paths
