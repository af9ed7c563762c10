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


class _FlaxConvBlock(nn.Module):
    """The reference block: nn.Conv (bias added) -> nn.BatchNorm(mask) -> ReLU -> max-pool."""

    channels: int

    @nn.compact
    def __call__(self, x, valid, train):
        x = nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=nn.initializers.kaiming_uniform(), name="conv")(
            x
        )
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(
            x, mask=jnp.broadcast_to(valid[:, :, None, None], x.shape)
        )
        return cnn_encoder.max_pool(nn.relu(x))


def test_conv_block_equals_flax_conv_and_batchnorm():
    """ConvBlock (conv bias applied inside the masked BatchNorm) computes what nn.Conv + nn.BatchNorm
    compute, with a non-zero conv bias and padded frames: same init, train-mode output, updated
    running statistics and gradients, and eval-mode output."""
    x = jax.random.normal(jax.random.key(0), (3, 10, 8, 2)) * 2.0 + 0.5
    valid = jnp.arange(10)[None] < jnp.array([10, 7, 4])[:, None]
    ours, ref = cnn_encoder.ConvBlock(5), _FlaxConvBlock(5)
    variables = nn.unbox(ours.init(jax.random.key(1), x, valid, False))
    ref_variables = nn.unbox(ref.init(jax.random.key(1), x, valid, False))
    jax.tree.map(np.testing.assert_array_equal, variables, ref_variables)  # same tree, same values
    variables["params"]["conv"]["bias"] = jnp.linspace(-1.0, 2.0, 5)  # imported weights have one

    def train(module, params, y):
        out, updates = module.apply({**variables, "params": params}, y, valid, True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.cos(out)), (out, updates["batch_stats"])

    results = [jax.value_and_grad(train, argnums=(1, 2), has_aux=True)(m, variables["params"], x) for m in (ours, ref)]
    (_, (out, stats)), grads = results[0]
    (_, (ref_out, ref_stats)), ref_grads = results[1]
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats, ref_stats)
    # the conv bias gets no gradient from a BatchNorm in train mode (the reference: rounding noise)
    np.testing.assert_array_equal(grads[0]["conv"]["bias"], 0.0)
    np.testing.assert_allclose(ref_grads[0]["conv"]["bias"], 0.0, atol=1e-4)
    for path in (("conv", "kernel"), ("bn", "scale"), ("bn", "bias")):
        a, b = grads[0][path[0]][path[1]], ref_grads[0][path[0]][path[1]]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
    np.testing.assert_allclose(grads[1], ref_grads[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(stats["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])  # they moved
    trained = {**variables, "batch_stats": stats}
    np.testing.assert_allclose(
        ours.apply(trained, x, valid, False), ref.apply(trained, x, valid, False), rtol=1e-5, atol=1e-5
    )
