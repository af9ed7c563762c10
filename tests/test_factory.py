"""models/factory.py: every encoder by name, one interface (frames / valid / clip), one way to build."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiossl_jax import config_loader
from audiossl_jax.models import factory, layers
from audiossl_jax.objectives import registry
from audiossl_jax.train.precision import compute_dtype

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# clip 1 has 48 real frames of 64: whole stacked frames (4), pooled frames (8) and patches (16); the
# ViT's patch at the end of a clip sees padded frames as they are (as EAT's), the other two zero them
MEL, FRAMES, REAL = 32, 64, 48
MODEL_CONFIGS = {
    "conformer": dict(encoder="conformer", conformer=dict(size="tiny", dropout_rate=0.1)),
    "vit": dict(encoder="vit", vit=dict(dim=32, depth=2, num_heads=2, patch_size=16, drop_path=0.1)),
    "cnn": dict(
        encoder="cnn", num_mel_bins=MEL, channels=4, blocks=3, dim=16, dropout=0.3, instance_dim=8
    ),  # flat, as SLICER's config: only the CNN's fields are read
}
# name -> (output frames T', real output frames of clip 1, width D)
EXPECTED = {"conformer": (16, 12, 32), "vit": (8, 6, 32), "cnn": (8, 6, 16)}


def _config(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def _batch():
    features = np.random.default_rng(0).normal(size=(2, FRAMES, MEL)).astype(np.float32)
    valid = np.ones((2, FRAMES), bool)
    valid[1, REAL:] = False
    return features, valid


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_every_encoder_returns_frames_valid_clip_and_masks_padding(name):
    encoder = factory.build_encoder(_config(**MODEL_CONFIGS[name]), jnp.float32)
    assert isinstance(encoder, factory.ENCODERS[name])
    features, valid = _batch()
    variables = nn.unbox(jax.jit(encoder.init)(jax.random.key(0), features, valid))
    apply = jax.jit(lambda f, v: encoder.apply(variables, f, v, train=False))
    out = apply(features, valid)
    t_out, real, dim = EXPECTED[name]
    assert out["frames"].shape == (2, t_out, dim) and out["clip"].shape == (2, dim)
    assert out["valid"].shape == (2, t_out) and out["valid"].dtype == jnp.bool_
    assert np.asarray(out["valid"][0]).all() and np.asarray(out["valid"][1]).sum() == real
    np.testing.assert_array_equal(out["valid"][1], np.arange(t_out) < real)  # ViT: time-major patches
    if name == "vit":
        np.testing.assert_array_equal(out["clip"], out["cls"])
    else:
        assert "cls" not in out
        pool = layers.masked_max_plus_mean if name == "cnn" else layers.masked_mean
        np.testing.assert_allclose(out["clip"], pool(out["frames"], out["valid"]), rtol=1e-5, atol=1e-6)
    # padding: what lies there changes neither the valid frames nor the clip vector
    noisy = features.copy()
    noisy[1, REAL:] = 100.0
    other = apply(noisy, valid)
    np.testing.assert_allclose(other["clip"], out["clip"], rtol=1e-4, atol=1e-5)
    keep = np.asarray(out["valid"])
    np.testing.assert_allclose(np.asarray(other["frames"])[keep], np.asarray(out["frames"])[keep], rtol=1e-4, atol=1e-5)
    # valid=None means every frame is real; train=True runs with a dropout rng (and batch statistics)
    np.testing.assert_allclose(
        encoder.apply(variables, features[:1], None)["clip"], out["clip"][:1], rtol=1e-5, atol=1e-6
    )
    trained, _ = encoder.apply(
        variables, features, valid, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
    )
    assert trained["frames"].shape == out["frames"].shape
    assert np.abs(np.asarray(trained["clip"]) - np.asarray(out["clip"])).max() > 1e-4


def test_settings_come_from_the_sub_config_or_the_flat_model_config():
    flat = factory.encoder_settings(
        _config(
            d_model=8,
            num_layers=1,
            num_heads=2,
            mlp_dim=16,
            kernel_size=3,
            first_kernel_size=3,
            rotary=False,
            final_dim=4,
        ),
        "conformer",
    )
    assert flat == dict(
        d_model=8, num_layers=1, num_heads=2, mlp_dim=16, kernel_size=3, first_kernel_size=3, rotary=False
    )  # final_dim is the method's, not the encoder's
    sized = factory.encoder_settings(_config(conformer=dict(size="tiny", rotary=False, stack=2)), "conformer")
    assert sized["d_model"] == 32 and sized["rotary"] is False and sized["stack"] == 2
    override = factory.encoder_settings(_config(conformer=dict(size="tiny", num_layers=5)), "conformer")
    assert override["num_layers"] == 5  # fields beat the size's
    # SLICER configs saved before config.model.conformer: config.model.conformer_size
    assert factory.encoder_settings(_config(conformer_size="tiny"), "conformer")["d_model"] == 32


def test_bad_names_and_settings_are_named():
    with pytest.raises(ValueError, match=r"config.model.encoder='rnn' is not one of \('cnn', 'conformer', 'vit'\)"):
        factory.build_encoder(_config(encoder="rnn"), jnp.float32)
    with pytest.raises(ValueError, match=r"config.model.encoder='vit' is not one of \('conformer',\)"):
        factory.build_encoder(_config(encoder="vit"), jnp.float32, default="conformer", choices=("conformer",))
    with pytest.raises(ValueError, match="config.model.encoder=None"):
        factory.build_encoder(_config(), jnp.float32)
    with pytest.raises(ValueError, match="config.model.conformer.rotray is not a setting of Conformer"):
        factory.build_encoder(_config(encoder="conformer", conformer=dict(size="tiny", rotray=False)), jnp.float32)
    with pytest.raises(ValueError, match=r"config.model.conformer.size='XL' is not one of \('tiny', 'S', 'L'\)"):
        factory.build_encoder(_config(encoder="conformer", conformer=dict(size="XL")), jnp.float32)
    with pytest.raises(ValueError, match="config.model.conformer does not set d_model, num_layers"):
        factory.build_encoder(_config(encoder="conformer", conformer=dict(stack=2)), jnp.float32)
    with pytest.raises(ValueError, match="config.model.vit.size='B' is not one of"):
        factory.build_encoder(_config(encoder="vit", vit=dict(size="B")), jnp.float32)


def _load(spec):
    return config_loader.load_config(os.path.join(REPO, "configs", spec))


@pytest.mark.parametrize(
    "spec, attr, name",
    [
        ("wav2vec2_conformer.py:tiny", "model.encoder", "conformer"),
        ("eat.py:tiny", "encoder", "vit"),
        ("slicer.py:tiny", "net.encoder", "cnn"),
        ("slicer.py:tiny,encoder=conformer", "net.encoder", "conformer"),
        ("slicer.py:tiny,encoder=vit", "net.encoder", "vit"),
    ],
)
def test_every_method_builds_its_encoder_with_the_factory(spec, attr, name):
    config = _load(spec)
    objective = registry.build(config)
    encoder = objective
    for part in attr.split("."):
        encoder = getattr(encoder, part)
    want = factory.build_encoder(config.model, compute_dtype(config), default=name)
    assert type(encoder) is type(want) is factory.ENCODERS[name]
    assert {f: getattr(encoder, f) for f in factory._fields(type(want))} == {
        f: getattr(want, f) for f in factory._fields(type(want))
    }


def test_slicer_conformer_reads_every_setting():
    """SLICER's Conformer used to be built from its size only (stack, rotary, dropout ignored)."""
    config = _load("slicer.py:tiny,encoder=conformer")
    config.model.conformer.update(stack=2, rotary=False, dropout_rate=0.0)
    encoder = registry.build(config).net.encoder
    assert (encoder.stack, encoder.rotary, encoder.dropout_rate, encoder.d_model) == (2, False, 0.0, 32)


def test_methods_refuse_an_encoder_they_cannot_train():
    config = _load("eat.py:tiny")
    config.model.encoder = "cnn"
    with pytest.raises(ValueError, match=r"config.model.encoder='cnn' is not one of \('vit',\)"):
        registry.build(config)
    config = _load("wav2vec2_conformer.py:tiny")
    config.model.encoder = "vit"
    with pytest.raises(ValueError, match=r"config.model.encoder='vit' is not one of \('conformer',\)"):
        registry.build(config)
