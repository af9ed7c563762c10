"""Weight import / export (`audiossl_jax/interop/`) against frozen PyTorch outputs; no torch needed.

Fixture: tests/fixtures/interop_reference.npz, made by tests/fixtures/make_interop_fixture.py (torch
venv); its docstring describes the cases. Import -> our JAX encoder -> the torch output within 1e-4;
export -> import (and import -> export) give back exactly what went in.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.interop import export, layouts
from audiossl_jax.models.conformer import Conformer, ConformerLayers
from audiossl_jax.models.vit import AudioViT

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "interop_reference.npz")
POSITIONS = "modality_encoders.IMAGE.fixed_positional_encoder.positions"


@pytest.fixture(scope="module")
def fixture():
    return dict(np.load(FIXTURE))


def _state(fixture, case):
    prefix = f"{case}/state/"
    return {k[len(prefix) :]: v for k, v in fixture.items() if k.startswith(prefix)}


def _settings(fixture, case):
    return json.loads(str(fixture[f"{case}/settings"]))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).shape == np.asarray(y).shape and np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _vit_tokens(model, params, x):
    out = model.apply({"params": params}, jnp.asarray(x))
    return np.concatenate([np.asarray(out["cls"])[:, None], np.asarray(out["frames"])], axis=1)


# ----------------------------------------------------------------------------- import vs torch outputs
def test_torchaudio_conformer_state_dict_imports(fixture):
    params = layouts.conformer_layers_from_torch(_state(fixture, "torchaudio"), num_heads=2)
    model = ConformerLayers(
        num_layers=2, num_heads=2, mlp_dim=32, kernel_size=5, first_kernel_size=5, conv_norm="group", rotary=False
    )
    x = jnp.asarray(fixture["torchaudio/x"])
    out = model.apply({"params": params}, x, jnp.ones(x.shape[:2], bool), deterministic=True)
    np.testing.assert_allclose(np.asarray(out), fixture["torchaudio/out"], atol=1e-4)


def test_torchaudio_batchnorm_conv_norm_is_refused(fixture):
    state = _state(fixture, "torchaudio")
    state["conformer_layers.1.conv_module.sequential.3.running_mean"] = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="BatchNorm"):
        layouts.conformer_layers_from_torch(state, num_heads=2)


@pytest.mark.parametrize("scan", [False, True])
def test_conformer_encoder_imports(fixture, scan):
    settings = _settings(fixture, "conformer")
    params = layouts.conformer_from_torch(_state(fixture, "conformer"), settings["num_heads"], scan=scan)
    model = Conformer(**settings, scan=scan)
    out = model.apply({"params": params}, jnp.asarray(fixture["conformer/x"]))
    assert out["frames"].shape == fixture["conformer/out"].shape
    np.testing.assert_allclose(np.asarray(out["frames"]), fixture["conformer/out"], atol=1e-4)


@pytest.mark.parametrize("case", ["vit", "vit_prenorm"])
@pytest.mark.parametrize("scan", [False, True])
def test_eat_vit_imports(fixture, case, scan):
    settings = _settings(fixture, case)
    params = layouts.vit_from_eat(_state(fixture, case), settings["num_heads"], mel_bins=16, scan=scan)
    tokens = _vit_tokens(AudioViT(**settings, scan=scan), params, fixture[f"{case}/x"])
    assert tokens.shape == fixture[f"{case}/out"].shape
    np.testing.assert_allclose(tokens, fixture[f"{case}/out"], atol=1e-4)


def test_eat_import_checks_positions_and_skips_pretraining_entries(fixture):
    state = _state(fixture, "vit")
    with pytest.raises(ValueError, match="fixed positions differ"):
        layouts.vit_from_eat(state, 2, mel_bins=32)  # 4 mel columns: not the table the model used
    base = layouts.vit_from_eat(state, 2, mel_bins=16)
    # a fine-tuned checkpoint: `model.` prefix and a classifier head; a pre-training one: EMA + decoder
    extra = {"_ema.blocks.0.attn.qkv.weight": np.ones(3), "modality_encoders.IMAGE.decoder.proj.weight": np.ones(2)}
    finetuned = {f"model.{k}": v for k, v in {**state, **extra}.items()} | {"head.weight": np.ones((5, 16))}
    _assert_trees_equal(layouts.vit_from_eat(finetuned, 2, mel_bins=16), base)
    with pytest.raises(ValueError, match="ALiBi"):
        layouts.vit_from_eat({**state, "modality_encoders.IMAGE.alibi_scale": np.ones((1, 1, 2, 1, 1))}, 2)
    with pytest.raises(KeyError, match="blocks.1.mlp.fc2.bias"):
        layouts.vit_from_eat({k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}, 2)


def test_eat_hugging_face_port_names_import(fixture):
    """The Hugging Face port's names (`EATModel.model`: local_encoder, extra_tokens,
    fixed_positional_encoder, pre_norm, blocks; fine-tuned: fc_norm, head) give the same encoder."""
    state = _state(fixture, "vit")
    hub = {}
    for k, v in state.items():
        k = k.replace("modality_encoders.IMAGE.context_encoder.norm.", "pre_norm.")
        hub["model." + k.replace("modality_encoders.IMAGE.", "")] = v
    assert {"model.local_encoder.proj.weight", "model.extra_tokens", "model.pre_norm.weight"} <= set(hub)
    assert "model.fixed_positional_encoder.positions" in hub and "model.blocks.0.attn.qkv.weight" in hub
    hub |= {"model.fc_norm.weight": np.ones(16), "model.head.weight": np.ones((5, 16))}
    settings = _settings(fixture, "vit")
    params = layouts.vit_from_eat(hub, settings["num_heads"], mel_bins=16)
    _assert_trees_equal(params, layouts.vit_from_eat(state, settings["num_heads"], mel_bins=16))
    tokens = _vit_tokens(AudioViT(**settings), params, fixture["vit/x"])
    np.testing.assert_allclose(tokens, fixture["vit/out"], atol=1e-4)
    with pytest.raises(ValueError, match="fixed positions differ"):  # the renamed buffer is checked too
        layouts.vit_from_eat(hub, settings["num_heads"], mel_bins=32)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("case", ["conformer", "vit", "vit_prenorm"])
def test_torch_state_dict_round_trip_is_exact(fixture, case):
    state = _state(fixture, case)
    kind = "conformer" if case == "conformer" else "vit"
    back = export.to_torch(kind, export.from_torch(kind, state, _settings(fixture, case)))
    state.pop(POSITIONS, None)  # a fixed table, recomputed by our ViT
    assert sorted(back) == sorted(state)
    for k in state:
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)


ENCODERS = {
    "conformer": dict(
        d_model=16, num_layers=3, num_heads=2, mlp_dim=32, kernel_size=5, first_kernel_size=7, conv_norm="group"
    ),
    "vit": dict(dim=16, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=8),
    "vit_prenorm": dict(dim=16, depth=2, num_heads=4, mlp_ratio=2.0, patch_size=8, pre_norm=True),
}


def _init(name, settings):
    cls = Conformer if name == "conformer" else AudioViT
    model = cls(**settings)
    params = nn.meta.unbox(model.init(jax.random.key(1), jnp.zeros((2, 24, 16)))["params"])
    params = jax.tree.map(
        lambda a: np.asarray(a) + np.float32(0.01) * np.arange(a.size, dtype=np.float32).reshape(a.shape), params
    )
    return model, params


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("scan", [False, True])
def test_export_then_import_gives_back_our_params(name, scan):
    settings = {**ENCODERS[name], "scan": scan}
    kind = "conformer" if name == "conformer" else "vit"
    _, params = _init(name, settings)
    state = export.to_torch(kind, params)
    if scan:  # the export is the same state dict as the unscanned model's
        _, flat = _init(name, {**settings, "scan": False})
        assert sorted(state) == sorted(export.to_torch(kind, flat))
    _assert_trees_equal(export.from_torch(kind, state, settings), jax.tree.map(np.asarray, params))


def test_safetensors_file_round_trip(tmp_path):
    pytest.importorskip("safetensors")  # in setup.py's INSTALL_REQUIRES
    _, params = _init("vit", ENCODERS["vit"])
    state = export.to_torch("vit", params)
    meta = {"encoder": "vit", "settings": ENCODERS["vit"]}
    path = str(tmp_path / "m.safetensors")
    export.save(path, state, meta)
    loaded, loaded_meta = export.load(path)
    assert loaded_meta == meta
    _assert_trees_equal(loaded, state)
    _assert_trees_equal(export.from_torch("vit", loaded, loaded_meta["settings"]), jax.tree.map(np.asarray, params))


def test_only_the_torch_reference_imports_torch_at_import_time():
    """Importing any other module needs no torch (export.load and hear.py import it inside functions)."""
    import ast

    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "audiossl_jax")
    importers = []
    for root, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                top = ast.parse(open(path).read()).body  # module-level statements only
                modules = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
                modules += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
                if any(m.split(".")[0] in ("torch", "torchaudio") for m in modules):
                    importers.append(os.path.relpath(path, package))
    assert importers == ["interop/torch_reference.py"]


def _byol_a_state(ref):
    """BYOL-A's `AudioNTT2020Task6` state dict (its own names) from the SLICER fixture's weights."""
    state = {}
    for i in range(3):
        state[f"features.{4 * i}.weight"] = ref[f"enc_conv{i}_w"]
        state[f"features.{4 * i}.bias"] = ref[f"enc_conv{i}_b"]
        for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
            state[f"features.{4 * i + 1}.{theirs}"] = ref[f"enc_bn{i}_{ours}"]
        state[f"features.{4 * i + 1}.num_batches_tracked"] = np.array(7, np.int64)
    state["fc.0.weight"], state["fc.0.bias"] = ref["enc_fc1_w"], ref["enc_fc1_b"]
    state["fc.3.weight"], state["fc.3.bias"] = ref["enc_fc2_w"], ref["enc_fc2_b"]
    return state


def test_byol_a_state_dict_imports_into_the_cnn_and_matches_torch():
    """BYOL-A's encoder (tests/fixtures/make_slicer.py: torch eval-mode frames) imported by name."""
    from audiossl_jax.models.cnn_encoder import CNNEncoder

    ref = dict(np.load(os.path.join(os.path.dirname(__file__), "fixtures", "slicer.npz")))
    state = _byol_a_state(ref)
    variables = export.from_torch("cnn", state, {})
    features = jnp.asarray(ref["enc_input"][:, 0].transpose(0, 2, 1))  # [B, 1, mel, T] -> [B, T, mel]
    out = CNNEncoder(num_mel_bins=16, dim=32).apply(variables, features)
    np.testing.assert_allclose(np.asarray(out["frames"]), ref["enc_frames_eval"], rtol=1e-4, atol=1e-5)
    back = export.to_torch("cnn", variables["params"], variables["batch_stats"])  # and back, exactly
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], v)
    broken = {k: v for k, v in state.items() if not k.startswith("features.5.")}
    with pytest.raises(ValueError, match="conv/BatchNorm pairs"):
        export.from_torch("cnn", broken, {})
    with pytest.raises(KeyError, match="AudioNTT2020"):
        export.from_torch("cnn", {"fc.0.weight": state["fc.0.weight"]}, {})
