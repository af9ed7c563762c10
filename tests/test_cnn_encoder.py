"""BYOL-A CNN encoder: PyTorch parity (tests/fixtures/make_slicer.py), shapes, valid-mask pooling."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.models import cnn_encoder, heads

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "slicer.npz")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def _ported_variables(ref):
    params, stats = {}, {}
    for i in range(3):
        # torch conv weight [out, in, mel, time] -> flax [time, mel, in, out] (H = time, W = mel)
        params[f"block{i}"] = {
            "conv": {"kernel": ref[f"enc_conv{i}_w"].transpose(3, 2, 1, 0), "bias": ref[f"enc_conv{i}_b"]},
            "bn": {"scale": ref[f"enc_bn{i}_scale"], "bias": ref[f"enc_bn{i}_bias"]},
        }
        stats[f"block{i}"] = {"bn": {"mean": ref[f"enc_bn{i}_mean"], "var": ref[f"enc_bn{i}_var"]}}
    params["fc1"] = {"kernel": ref["enc_fc1_w"].T, "bias": ref["enc_fc1_b"]}
    params["fc2"] = {"kernel": ref["enc_fc2_w"].T, "bias": ref["enc_fc2_b"]}
    return params, stats


def _features(ref):
    return jnp.asarray(ref["enc_input"][:, 0].transpose(0, 2, 1))  # [B, 1, mel, T] -> [B, T, mel]


def test_matches_pytorch_eval_and_train(ref):
    x = _features(ref)
    model = cnn_encoder.CNNEncoder(num_mel_bins=16, dim=32, dropout=0.0)
    variables = jax.tree.map(jnp.asarray, dict(zip(("params", "batch_stats"), _ported_variables(ref))))
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), x)))
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, variables)

    out = model.apply(variables, x)
    np.testing.assert_allclose(out["frames"], ref["enc_frames_eval"], rtol=1e-4, atol=1e-5)
    frames = ref["enc_frames_eval"]
    np.testing.assert_allclose(out["clip"], frames.max(1) + frames.mean(1), rtol=1e-4, atol=1e-5)

    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out["frames"], ref["enc_frames_train"], rtol=1e-4, atol=1e-5)
    for i in range(3):
        new = updates["batch_stats"][f"block{i}"]["bn"]
        np.testing.assert_allclose(new["mean"], ref[f"enc_bn{i}_mean_after"], rtol=1e-5, atol=1e-6)
        # torch tracks the unbiased batch variance, flax the biased one: a factor n/(n-1) on the 0.1
        # batch share, n >= 48
        np.testing.assert_allclose(new["var"], ref[f"enc_bn{i}_var_after"], rtol=5e-3)


def test_shapes_and_logical_axes():
    model = cnn_encoder.CNNEncoder(num_mel_bins=16, channels=4, dim=8)
    x = jnp.ones((3, 43, 16))
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(lambda v: model.apply(nn.unbox(v), x), boxed)
    assert out["frames"].shape == (3, 5, 8) and out["clip"].shape == (3, 8) and out["valid"].shape == (3, 5)
    specs = nn.get_partition_spec(boxed["params"])
    assert specs["block1"]["conv"]["kernel"] == jax.sharding.PartitionSpec("kernel", None, None, "channels")
    assert specs["fc2"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")
    with pytest.raises(ValueError, match="num_mel_bins"):
        model.init(jax.random.key(0), jnp.ones((1, 16, 12)))


def test_padded_frames_do_not_change_valid_outputs():
    model = cnn_encoder.CNNEncoder(num_mel_bins=16, channels=4, dim=8, dropout=0.0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 40, 16)).astype(np.float32)
    valid = np.ones((2, 40), bool)
    valid[1, 21:] = False
    noisy = x.copy()
    noisy[1, 21:] = 100.0 * rng.normal(size=(19, 16))
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.asarray(x)))
    apply = jax.jit(
        lambda f, train: model.apply(variables, f, jnp.asarray(valid), train=train, mutable=["batch_stats"])[0],
        static_argnums=1,
    )
    for train in (False, True):
        a, b = apply(jnp.asarray(x), train), apply(jnp.asarray(noisy), train)
        np.testing.assert_allclose(a["clip"], b["clip"], rtol=1e-5, atol=1e-6)
    # 21 valid frames -> pooled frames 0..2 valid (frame 2 covers input frames 16..23)
    np.testing.assert_array_equal(np.asarray(a["valid"][1]), [True, True, True, False, False])


def test_heads_shapes_and_softmax():
    x = jax.random.normal(jax.random.key(0), (5, 12))
    inst = heads.InstanceHead(out=6)
    clus = heads.ClusterHead(clusters=7, hidden=9)
    q = inst.apply(nn.unbox(inst.init(jax.random.key(1), x)), x)
    c = clus.apply(nn.unbox(clus.init(jax.random.key(2), x)), x)
    assert q.shape == (5, 6) and c.shape == (5, 7)
    np.testing.assert_allclose(c.sum(-1), 1.0, rtol=1e-6)


def test_max_pool_matches_flax_values_and_gradient():
    """The reshape max-pool equals nn.max_pool (odd sizes drop the trailing row/column), and so does
    its gradient where no window has a tie (continuous random input)."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    flax_pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    np.testing.assert_array_equal(cnn_encoder.max_pool(x), flax_pool(x))
    weights = jax.random.normal(jax.random.key(1), (2, 4, 3, 3))
    grad = lambda pool: jax.grad(lambda y: jnp.sum(pool(y) * weights))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(cnn_encoder.max_pool), grad(flax_pool))
