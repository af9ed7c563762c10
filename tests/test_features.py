"""Front ends against frozen references (torchaudio Kaldi fbank, librosa melspectrogram), stats."""

import os

import numpy as np
import pytest

from audiossl_jax.features import frontends, kaldi_fbank, log_mel, stats

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
KALDI_CONFIGS = {  # fixture key -> kaldi_fbank kwargs (see fixtures/make_kaldi_fbank.py)
    "povey_128": dict(num_mel_bins=128, window_type="povey"),
    "hanning_128": dict(num_mel_bins=128, window_type="hanning"),
    "povey_64_lowfreq60": dict(num_mel_bins=64, window_type="povey", low_freq=60.0),
}
LOG_MEL_CONFIGS = {  # fixture key -> log_mel kwargs (see fixtures/make_log_mel.py)
    "slicer_64": dict(n_fft=1024, hop_length=160, num_mel_bins=64, fmin=60.0, fmax=7800.0),
    "win400_128": dict(n_fft=512, hop_length=160, win_length=400, num_mel_bins=128, fmin=0.0, fmax=8000.0),
}


@pytest.fixture(scope="module")
def kaldi_ref():
    return np.load(os.path.join(FIXTURES, "kaldi_fbank.npz"))


@pytest.mark.parametrize("name", sorted(KALDI_CONFIGS))
def test_kaldi_fbank_matches_torchaudio(kaldi_ref, name):
    got = kaldi_fbank.kaldi_fbank(kaldi_ref["waveform"], **KALDI_CONFIGS[name])
    want = kaldi_ref[name]
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-3


def test_kaldi_frame_count_silence_and_short_input():
    assert kaldi_fbank.kaldi_fbank(np.zeros(399, np.float32)).shape == (0, 128)
    assert kaldi_fbank.kaldi_fbank(np.zeros(400, np.float32)).shape == (1, 128)
    silence = kaldi_fbank.kaldi_fbank(np.zeros(16000, np.float32))
    assert silence.shape == (98, 128)
    np.testing.assert_array_equal(silence, np.log(np.finfo(np.float32).eps))
    with pytest.raises(ValueError, match="window_type"):
        kaldi_fbank.kaldi_fbank(np.zeros(800, np.float32), window_type="kaiser")


@pytest.mark.parametrize("name", sorted(LOG_MEL_CONFIGS))
def test_log_mel_matches_librosa_melspectrogram(kaldi_ref, name):
    power = np.load(os.path.join(FIXTURES, "log_mel.npz"))[name]
    got = log_mel.log_mel(kaldi_ref["waveform"], **LOG_MEL_CONFIGS[name])
    want = np.log(power + log_mel.DEFAULT_LOG_OFFSET)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-3


@pytest.mark.slow
def test_log_mel_matches_librosa_directly():
    import librosa  # its STFT compiles numba code (~40 s in a fresh environment)

    y = np.random.default_rng(0).standard_normal(12345).astype(np.float32) * 0.1
    want = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=1024, hop_length=160, n_mels=64, fmin=60, fmax=7800).T
    got = log_mel.log_mel(y)
    np.testing.assert_allclose(got, np.log(want + log_mel.DEFAULT_LOG_OFFSET), atol=1e-4)


def test_frontends_by_name_and_params_round_trip():
    fbank = frontends.make_frontend("kaldi_fbank")
    assert fbank.num_mel_bins == 128 and fbank.frame_rate == 100.0 and fbank.min_samples() == 400
    mel = frontends.make_frontend("librosa_mel", num_mel_bins=None)
    assert mel.num_mel_bins == 64 and mel.params["fmin"] == 60.0 and mel.params["hop_length"] == 160
    assert frontends.frontend_from_params(fbank.params) == fbank
    assert frontends.frontend_from_params(mel.params) == mel
    y = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    np.testing.assert_array_equal(fbank(y), kaldi_fbank.kaldi_fbank(y))
    np.testing.assert_array_equal(mel(y), log_mel.log_mel(y))
    with pytest.raises(ValueError, match="not one of"):
        frontends.make_frontend("mfcc")
    with pytest.raises(ValueError, match="unknown option 'hop_length'"):
        frontends.make_frontend("kaldi_fbank", hop_length=100)


def test_mel_stats_merge_equals_numpy():
    rng = np.random.default_rng(0)
    parts = [rng.normal(-5, 3, size=(n, 8)).astype(np.float16) for n in (10, 1, 33)]
    a, b = stats.MelStats.zeros(8), stats.MelStats.zeros(8)
    a.add(parts[0])
    b.add(parts[1])
    b.add(parts[2])
    merged = stats.MelStats.from_json(a.merge(b).to_json())
    x = np.concatenate(parts).astype(np.float64)
    mean, std = merged.mean_std()
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-9)
    g_mean, g_std = merged.global_mean_std()
    np.testing.assert_allclose([g_mean, g_std], [x.mean(), x.std()], rtol=1e-9)
    with pytest.raises(ValueError, match="no frames"):
        stats.MelStats.zeros(3).mean_std()


def test_frontends_do_not_depend_on_the_blas_thread_count():
    """Prep shards must be bitwise reproducible: the front ends' matmuls run on one BLAS thread."""
    import threadpoolctl

    y = np.random.default_rng(3).standard_normal(5 * 16000).astype(np.float32) * 0.1
    for frontend in (frontends.make_frontend("kaldi_fbank"), frontends.make_frontend("librosa_mel")):
        with threadpoolctl.threadpool_limits(limits=1):
            one = frontend(y)
        with threadpoolctl.threadpool_limits(limits=2):
            two = frontend(y)
        assert one.tobytes() == two.tobytes()
