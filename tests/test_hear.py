"""The HEAR API (audiossl_jax/hear.py): shapes, dtypes and timestamps; numpy in -> numpy out, torch in ->
torch out (only where torch is installed)."""

import os

import numpy as np
import pytest
import soundfile as sf
from helpers_pretrained import tiny_wav2vec2_run

from audiossl_jax import hear


@pytest.fixture(scope="module")
def model_and_audio(prepare_demo_splits, tmp_path_factory):
    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    audio_dir = os.path.join(
        os.path.dirname(os.path.dirname(prepare_demo_splits("librosa_mel", num_mel_bins=64)[0])), "audio", "eval"
    )
    waves = [sf.read(os.path.join(audio_dir, f), dtype="float32")[0] for f in sorted(os.listdir(audio_dir))[:3]]
    audio = np.stack([np.concatenate([w, w[:8000]]) for w in waves])  # [3, 1.5 s]: 151 frames, 3 windows
    return hear.load_model(workdir), audio


def test_hear_numpy(model_and_audio):
    model, audio = model_and_audio
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 32  # tiny conformer
    scene = hear.get_scene_embeddings(audio, model)
    assert isinstance(scene, np.ndarray) and scene.dtype == np.float32
    assert scene.shape == (3, model.scene_embedding_size)
    frames, ms = hear.get_timestamp_embeddings(audio, model)
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32 and ms.dtype == np.float32
    t = 16 + 16 + 6  # windows of 64 input frames (10 ms) -> 16 frames of 40 ms each; 23 frames -> 6
    assert frames.shape == (3, t, model.timestamp_embedding_size) and ms.shape == (3, t)
    np.testing.assert_allclose(ms, np.broadcast_to(15.0 + 40.0 * np.arange(t), (3, t)), atol=1e-3)
    assert not np.allclose(scene[0], scene[1])  # different sounds, different embeddings
    np.testing.assert_allclose(
        hear.get_scene_embeddings(audio[1:2].astype(np.float64), model), scene[1:2], rtol=1e-5, atol=1e-5
    )  # per row, independent of the batch
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(audio[0], model)


def test_hear_torch(model_and_audio):
    torch = pytest.importorskip("torch")
    model, audio = model_and_audio
    scene = hear.get_scene_embeddings(torch.from_numpy(audio), model)
    frames, ms = hear.get_timestamp_embeddings(torch.from_numpy(audio), model)
    assert isinstance(scene, torch.Tensor) and scene.dtype == torch.float32 and scene.shape == (3, 32)
    assert isinstance(ms, torch.Tensor) and frames.shape[:2] == ms.shape
    np.testing.assert_allclose(scene.numpy(), hear.get_scene_embeddings(audio, model), rtol=1e-6)


def test_hear_tensor_in_tensor_out_without_torch(model_and_audio, monkeypatch):
    """The torch round trip (tensor in -> same kind, same device out) with a stand-in `torch` module,
    so it is checked where torch is not installed."""
    import sys
    import types

    class Tensor:
        __module__ = "torch"

        def __init__(self, array, device="cpu"):
            self.array, self.device = np.asarray(array), device

        def detach(self):
            return self

        def cpu(self):
            return Tensor(self.array)

        def numpy(self):
            return self.array

        def to(self, device):
            return Tensor(self.array, device)

    fake = types.ModuleType("torch")
    fake.from_numpy = Tensor
    monkeypatch.setitem(sys.modules, "torch", fake)
    model, audio = model_and_audio
    scene = hear.get_scene_embeddings(Tensor(audio, device="cuda:1"), model)
    frames, ms = hear.get_timestamp_embeddings(Tensor(audio, device="cuda:1"), model)
    for out in (scene, frames, ms):
        assert isinstance(out, Tensor) and out.device == "cuda:1" and out.array.dtype == np.float32
    np.testing.assert_allclose(scene.array, hear.get_scene_embeddings(audio, model), rtol=1e-6)
    assert frames.array.shape[:2] == ms.array.shape == (3, 38)
