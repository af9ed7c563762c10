"""`audiossl embed` (evaluate/embed_audio.py, evaluate/encoder.py): shapes, timestamps, windows of long
files, and equality with the probe's clip embeddings of the same clips."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from helpers_pretrained import tiny_wav2vec2_run

from audiossl_jax import cli
from audiossl_jax.evaluate import embed, encoder


@pytest.fixture(scope="module")
def run(prepare_demo_splits, tmp_path_factory):
    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    train_dir, eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    audio = os.path.join(os.path.dirname(os.path.dirname(train_dir)), "audio")
    return {
        "workdir": workdir,
        "train_dir": train_dir,
        "eval_dir": eval_dir,
        "audio": audio,
        "encoder": encoder.FrozenEncoder.load(workdir),
    }


def test_csv_embeddings_equal_the_probe_path(run, tmp_path):
    out = str(tmp_path / "eval.npz")
    # 1.28 s = 128 frames: each 1 s demo clip (101 frames) fits one window
    assert (
        cli.main(
            [
                "embed",
                "--workdir",
                run["workdir"],
                "--input",
                os.path.join(run["audio"], "eval.csv"),
                "--out",
                out,
                "--window-seconds",
                "1.28",
            ]
        )
        == 0
    )
    z = np.load(out)
    enc = run["encoder"]
    n, dim = z["clip"].shape
    assert n == 10 and dim == enc.embedding_size and int(z["step"]) == 2 == enc.step
    assert int(z["window_frames"]) == 128 and int(z["frame_stride"]) == 4  # model.stack
    assert float(z["frame_hop_seconds"]) == pytest.approx(0.04)
    offsets = z["frame_offsets"]
    assert offsets[0] == 0 and offsets[-1] == len(z["frames"]) == len(z["frame_times"])
    assert z["frames"].shape[1] == enc.frame_embedding_size
    for i in range(n):
        times = z["frame_times"][offsets[i] : offsets[i + 1]]
        assert len(times) == 26  # ceil(101 frames / 4)
        # centre of the first stacked frame: mean of the centres of input frames 0..3 (0, 10, 20, 30 ms)
        assert times[0] == pytest.approx(0.015)
        np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-9)
    assert list(z["labels"][:2]) and all(z["labels"])  # the CSV's label names are kept

    # the probe's path: prepared eval split, same window, the same restored params
    mesh = enc.mesh
    with jax.set_mesh(mesh):
        x, _ = embed.extract(
            enc.objective,
            enc.params,
            enc.aux,
            run["eval_dir"],
            stats_dir=run["train_dir"],
            crop_frames=128,
            batch_size=enc.batch_size,
            mesh=mesh,
            rules=enc.config.rules,
            progress=False,
        )
    np.testing.assert_allclose(z["clip"], x, rtol=1e-4, atol=1e-4)


def test_long_file_in_windows_and_folder_input(run, tmp_path):
    enc = run["encoder"]
    waves = [
        sf.read(os.path.join(run["audio"], "eval", f))[0]
        for f in sorted(os.listdir(os.path.join(run["audio"], "eval")))[:3]
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(str(folder / "long.wav"), np.concatenate(waves).astype(np.float32), 16000)  # 3 s: 301 frames
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEnot audio")
    out = str(tmp_path / "long.npz")
    assert cli.main(["embed", "--workdir", run["workdir"], "--input", str(folder), "--out", out]) == 0
    z = np.load(out)
    assert list(z["clip_ids"]) == ["long.wav"] and list(z["skipped_paths"]) == [str(folder / "broken.wav")]
    assert int(z["window_frames"]) == 64  # the probe window: config.data.crop_frames
    times = z["frame_times"]
    assert len(times) == 4 * 16 + 12  # 4 full windows of 64 frames + 45 frames -> ceil(45 / 4)
    np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-9)  # continuous across window edges
    assert times[0] == pytest.approx(0.015) and times[-1] == pytest.approx(3.015)

    # window k's frames are those of its 64 input frames embedded alone; the clip is the frame-weighted
    # mean of the windows' clip embeddings
    feats = enc.features(np.concatenate(waves).astype(np.float32))
    whole = next(enc.embed_features([feats]))
    parts = list(enc.embed_features([feats[k * 64 : (k + 1) * 64] for k in range(5)]))
    np.testing.assert_allclose(whole.frames, np.concatenate([p.frames for p in parts]), rtol=1e-5, atol=1e-5)
    weights = np.array([64, 64, 64, 64, 45]) / 301
    np.testing.assert_allclose(whole.clip, sum(w * p.clip for w, p in zip(weights, parts)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z["clip"][0], whole.clip, rtol=1e-5, atol=1e-5)
    # 4 copies = 20 windows: two batches of 16, the 4th copy split across them; order kept
    copies = list(enc.embed_features([feats] * 4))
    assert len(copies) == 4 and enc.batch_size == 16
    for c in copies:
        np.testing.assert_allclose(c.frames, whole.frames, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(c.times, whole.times)


def test_frame_validity_from_any_objective():
    frames = jnp.zeros((2, 3, 5))
    valid = jnp.array([[True] * 8 + [False] * 4, [True] * 3 + [False] * 9])
    # no validity key (a method that returns only frames and clip): pooled from the input mask
    np.testing.assert_array_equal(
        encoder._frame_valid({"frames": frames}, valid, 4), [[True, True, False], [True, False, False]]
    )
    own = jnp.array([[True, False, False]] * 2)
    for key in ("valid", "frames_valid"):  # every built-in objective / the older name (custom objectives)
        np.testing.assert_array_equal(encoder._frame_valid({"frames": frames, key: own}, valid, 4), own)


def test_patch_encoder_stride_and_fbank_timestamps(prepare_demo_splits, tmp_path):
    """EAT (ViT on 16x16 patches, `valid` per time patch) on Kaldi fbank (25 ms frames every 10 ms, not
    centred): one frame per 16 input frames, centred on them; random init needs no checkpoint."""
    from audiossl_jax import config_loader
    from audiossl_jax.train import loop

    config = config_loader.load_config(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "eat.py") + ":tiny"
    )
    config.data.train_dir, config.data.eval_dir = prepare_demo_splits("kaldi_fbank", num_mel_bins=64)
    workdir = tmp_path / "eat"
    workdir.mkdir()
    (workdir / loop.CONFIG_FILE).write_text(config.to_json())
    enc = encoder.FrozenEncoder.load(str(workdir), random_init=True)
    assert enc.stride == 16 and enc.window == 64 and enc.step == 0
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1  # 98 fbank frames
    out = next(enc.embed_waves([wave]))
    assert out.frames.shape == (4 + 3, enc.frame_embedding_size)  # 64 frames -> 4 patches, 34 -> 3
    # input frame j spans [10 j, 10 j + 25) ms: centre 12.5 + 10 j ms; a patch covers 16 of them
    np.testing.assert_allclose(out.times, 0.0125 + 0.01 * (16 * np.arange(7) + 7.5), atol=1e-9)
