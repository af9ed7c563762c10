"""`audiossl export` on a pre-trained workdir, and (with torch installed) the torch reference modules
loading an export and computing what our JAX encoders compute."""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from helpers_pretrained import REPO, tiny_wav2vec2_run

from audiossl_jax.interop import export
from audiossl_jax.models.conformer import Conformer
from audiossl_jax.models.vit import AudioViT


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_export_command_writes_the_runs_encoder(prepare_demo_splits, tmp_path_factory, tmp_path):
    pytest.importorskip("safetensors")  # in setup.py's INSTALL_REQUIRES
    from audiossl_jax import cli
    from audiossl_jax.evaluate.encoder import FrozenEncoder

    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    out = str(tmp_path / "encoder.safetensors")
    assert cli.main(["export", "--workdir", workdir, "--out", out]) == 0
    state, meta = export.load(out)
    assert (meta["method"], meta["encoder"], meta["step"], meta["mel_bins"]) == ("wav2vec2", "conformer", 2, 64)
    assert meta["frontend"]["name"] and meta["settings"]["d_model"] == 32

    run = FrozenEncoder.load(workdir)
    expected = _np(run.objective.encoder_variables(run.params, run.aux)["params"])
    _assert_trees_equal(export.from_torch("conformer", state, meta["settings"]), expected)
    np.testing.assert_array_equal(state["normalization.mean"], run._mean)
    np.testing.assert_allclose(1.0 / state["normalization.std"], run._inv_std, rtol=1e-6)
    # the exported settings rebuild the run's encoder: same frames as the run's own module
    features = np.random.default_rng(0).normal(size=(2, 32, 64)).astype(np.float32)
    ours = Conformer(**meta["settings"]).apply({"params": expected}, jnp.asarray(features))["frames"]
    runs = run.objective.model.encoder.apply({"params": expected}, jnp.asarray(features))["frames"]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(runs))

    with pytest.raises(ValueError, match="safetensors"):
        export.export_workdir(workdir, str(tmp_path / "encoder.pt"))


def test_exported_run_loads_in_torch_and_matches(prepare_demo_splits, tmp_path_factory, tmp_path):
    """The file `audiossl export` writes (its metadata alone) builds the run's encoder in torch."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchaudio")
    pytest.importorskip("safetensors")
    from audiossl_jax.evaluate.encoder import FrozenEncoder
    from audiossl_jax.interop import torch_reference

    workdir = tiny_wav2vec2_run(prepare_demo_splits, tmp_path_factory)
    out = str(tmp_path / "encoder.safetensors")
    export.export_workdir(workdir, out)
    run = FrozenEncoder.load(workdir)
    features = np.random.default_rng(3).normal(size=(2, 30, 64)).astype(np.float32)
    params = run.objective.encoder_variables(run.params, run.aux)["params"]
    ours = run.objective.model.encoder.apply({"params": params}, jnp.asarray(features))["frames"]
    with torch.no_grad():
        theirs = torch_reference.load(out, dtype=torch.float64)(torch.from_numpy(features).double()).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


LIVE = {
    # our defaults torchaudio lacks: rotary attention, LayerNorm conv norm, frame-mean input norm
    "conformer": dict(
        d_model=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
        kernel_size=5,
        first_kernel_size=7,
        input_norm="frame_mean",
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        input_dropout_rate=0.0,
    ),
    "conformer_group": dict(
        d_model=16, num_layers=2, num_heads=4, mlp_dim=32, kernel_size=3, first_kernel_size=3, conv_norm="group"
    ),
    "vit": dict(dim=16, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=8),
    "vit_prenorm": dict(dim=16, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=8, pre_norm=True),
}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_torch_reference_loads_an_export_and_matches(tmp_path, case):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchaudio")
    pytest.importorskip("safetensors")
    from audiossl_jax.interop import torch_reference

    kind = "conformer" if case.startswith("conformer") else "vit"
    settings = LIVE[case]
    model = (Conformer if kind == "conformer" else AudioViT)(**settings)
    features = np.random.default_rng(1).normal(size=(2, 22, 16)).astype(np.float32)
    params = _np(nn.meta.unbox(model.init(jax.random.key(0), jnp.asarray(features))["params"]))
    # non-trivial norm affines and biases (init has ones and zeros)
    params = jax.tree.map(
        lambda a: a + np.float32(0.1) * np.sin(np.arange(a.size, dtype=np.float32)).reshape(a.shape), params
    )
    path = str(tmp_path / "m.safetensors")
    export.save(path, export.to_torch(kind, params), {"encoder": kind, "settings": settings, "mel_bins": 16})

    torch_model = torch_reference.load(path, dtype=torch.float64)
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(features).double()).numpy()
    out = model.apply({"params": params}, jnp.asarray(features))
    if kind == "conformer":
        ours = np.asarray(out["frames"])
    else:
        ours = np.concatenate([np.asarray(out["cls"])[:, None], np.asarray(out["frames"])], axis=1)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("wrap", [None, "model"])
def test_torchaudio_checkpoint_file_imports(tmp_path, wrap):
    """A `.pt` file (a bare state dict, or a fairseq-style {"model": state dict}) read with torch."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchaudio")
    from torchaudio.models import Conformer as TorchConformer

    from audiossl_jax.interop import layouts
    from audiossl_jax.models.conformer import ConformerLayers

    torch.manual_seed(0)
    model = TorchConformer(16, 4, 32, 2, 3, dropout=0.0, use_group_norm=True).eval()
    path = str(tmp_path / "conformer.pt")
    torch.save(model.state_dict() if wrap is None else {wrap: model.state_dict(), "cfg": {}}, path)
    state, meta = export.load(path)
    assert meta == {}
    if wrap:  # a fairseq checkpoint pickles its config objects: refused unless trusted
        torch.save({wrap: model.state_dict(), "args": argparse.Namespace(arch="eat")}, path)
        with pytest.raises(ValueError, match="trust_pickle"):
            export.load(path)
        state, _ = export.load(path, trust_pickle=True)
    params = layouts.conformer_layers_from_torch(state, num_heads=4)
    x = np.random.default_rng(2).normal(size=(2, 9, 16)).astype(np.float32)
    with torch.no_grad():
        theirs = model(torch.from_numpy(x), torch.full((2,), 9))[0].numpy()
    ours = ConformerLayers(2, 4, 32, 3, 3, conv_first=False, conv_norm="group", rotary=False).apply(
        {"params": params}, jnp.asarray(x), jnp.ones((2, 9), bool), deterministic=True
    )
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


@pytest.fixture(scope="module")
def slicer_run(prepare_demo_splits, tmp_path_factory):
    """A 2-step `configs/slicer.py:tiny` run (BYOL-A CNN encoder with BatchNorm statistics)."""
    from audiossl_jax import config_loader
    from audiossl_jax.train import loop

    config = config_loader.load_config(os.path.join(REPO, "configs", "slicer.py:tiny"))
    config.data.train_dir, config.data.eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    config.train.steps = 2
    workdir = str(tmp_path_factory.mktemp("slicer_export") / "run")
    loop.pretrain(config, workdir)
    return workdir


def _cnn_frames(run, variables, features):
    module = export.encoder_module(run.objective)
    return np.asarray(module.apply(variables, jnp.asarray(features))["frames"])


def test_export_command_writes_slicers_cnn_in_byol_a_names(slicer_run, tmp_path):
    from audiossl_jax import cli
    from audiossl_jax.evaluate.encoder import FrozenEncoder

    out = str(tmp_path / "cnn.safetensors")
    assert cli.main(["export", "--workdir", slicer_run, "--out", out]) == 0
    state, meta = export.load(out)
    assert (meta["method"], meta["encoder"], meta["step"], meta["mel_bins"]) == ("slicer", "cnn", 2, 64)
    blocks = meta["settings"]["blocks"]
    assert {k for k in state if k.startswith("features.")} == {
        f"features.{4 * i + j}.{name}"
        for i in range(blocks)
        for j, names in (
            (0, ("weight", "bias")),
            (1, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
        )
        for name in names
    }
    run = FrozenEncoder.load(slicer_run)
    expected = _np(export.encoder_variables(run.objective, run.params, run.aux))
    assert set(expected) == {"params", "batch_stats"}
    # the run's running statistics moved off their init, so the export carries trained values
    assert not np.allclose(expected["batch_stats"]["block0"]["bn"]["var"], 1.0)
    _assert_trees_equal(export.from_torch("cnn", state, meta["settings"]), expected)
    # the clip the run embeds is the exported encoder's max + mean of frames
    features = np.random.default_rng(0).normal(size=(2, 32, 64)).astype(np.float32)
    frames = _cnn_frames(run, expected, features)
    clip = run.objective.embed(run.params, run.aux, jnp.asarray(features), jnp.ones((2, 32), bool))["clip"]
    np.testing.assert_allclose(np.asarray(clip), frames.max(1) + frames.mean(1), rtol=1e-5, atol=1e-6)


def test_exported_cnn_loads_in_torch_and_matches(slicer_run, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from audiossl_jax.evaluate.encoder import FrozenEncoder
    from audiossl_jax.interop import torch_reference

    out = str(tmp_path / "cnn.safetensors")
    export.export_workdir(slicer_run, out)
    run = FrozenEncoder.load(slicer_run)
    features = np.random.default_rng(3).normal(size=(2, 27, 64)).astype(np.float32)  # 27: the pools floor
    ours = _cnn_frames(run, export.encoder_variables(run.objective, run.params, run.aux), features)
    with torch.no_grad():
        theirs = torch_reference.load(out, dtype=torch.float64)(torch.from_numpy(features).double()).numpy()
    assert ours.shape == theirs.shape == (2, 3, int(export.load(out)[1]["settings"]["dim"]))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
