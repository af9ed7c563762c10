"""Our Conformer block stack vs torchaudio's ConformerLayer with the same weights (frozen fixture).

Fixture: tests/fixtures/conformer_torchaudio_reference.npz, made by
tests/fixtures/make_conformer_fixture.py (torch venv); its docstring describes the cases.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from audiossl_jax.models.conformer import ConformerLayers

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "conformer_torchaudio_reference.npz")
CASES = {  # fixture case -> (conv_first, conv_norm)
    "conv_first": (True, "group"),
    "conv_last": (False, "group"),
    "layer_norm_conv": (True, "layer"),
}


@pytest.fixture(scope="module")
def fixture():
    return dict(np.load(FIXTURE))


def _apply(fixture, case, valid):
    conv_first, conv_norm = CASES[case]
    prefix = f"{case}/params/"
    params = traverse_util.unflatten_dict(
        {tuple(k[len(prefix) :].split("/")): v for k, v in fixture.items() if k.startswith(prefix)}
    )
    model = ConformerLayers(
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
        kernel_size=5,
        first_kernel_size=7,
        conv_first=conv_first,
        conv_norm=conv_norm,
        rotary=False,
    )
    return np.asarray(model.apply({"params": params}, jnp.asarray(fixture["x"]), valid, deterministic=True))


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torchaudio_without_padding(fixture, case):
    x = fixture["x"]
    valid = jnp.ones(x.shape[:2], bool)
    np.testing.assert_allclose(_apply(fixture, case, valid), fixture[f"{case}/out_full"], atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_padded_batch_matches_torchaudio_on_each_unpadded_clip(fixture, case):
    x, lengths = fixture["x"], fixture["lengths"]
    assert lengths.min() < x.shape[1], "fixture must contain padded clips"
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    out = _apply(fixture, case, jnp.asarray(valid))
    ref = fixture[f"{case}/out_clipwise"]
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4)
