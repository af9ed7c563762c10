"""Fine-tuning pieces: LLRD scale tree, class-balanced weights, mixup, SpecAugment, losses, head."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiossl_jax.data import augment
from audiossl_jax.models.vit import AudioViT
from audiossl_jax.objectives import finetune_recipe as ft
from audiossl_jax.train import optimizer

TINY = dict(dim=16, depth=3, num_heads=2)
FEATS = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32)), jnp.float32)
VALID = jnp.ones((2, 32), bool)


def _params(scan=False):
    """A classifier params tree as the fine-tuning objective lays it out: {encoder, fc_norm, head}."""
    encoder = nn.unbox(jax.eval_shape(AudioViT(**TINY, scan=scan).init, jax.random.key(0), FEATS, VALID)["params"])
    head = nn.unbox(jax.eval_shape(ft.ClassifierHead(5).init, jax.random.key(1), jnp.zeros((2, 16)))["params"])
    return {"encoder": encoder, **head}


def test_layerwise_lr_scales_follow_eat():
    params = _params()
    scales = ft.layerwise_lr_scales(params, 3, 0.65)
    assert set(params) == {"encoder", "fc_norm", "head"}
    for i in range(3):  # EAT: layer_scales[i + 1] = 0.65 ** (num_layers + 1 - (i + 1)), num_layers = 3
        leaves = jax.tree.leaves(scales["encoder"][f"block_{i}"])
        assert len(leaves) == 12 and all(s == np.float32(0.65 ** (3 - i)) for s in leaves)
    assert scales["head"]["kernel"] == 1.0 and scales["fc_norm"]["scale"] == 1.0
    assert scales["encoder"]["patch_embed"]["kernel"] == 1.0 and scales["encoder"]["cls_token"] == 1.0
    beit = ft.layerwise_lr_scales(params, 3, 0.65, decay_embeddings=True)
    np.testing.assert_allclose(beit["encoder"]["patch_embed"]["kernel"], 0.65**4, rtol=1e-6)
    np.testing.assert_allclose(beit["encoder"]["block_2"]["attn"]["qkv"]["kernel"], 0.65, rtol=1e-6)


def test_layerwise_lr_scales_under_scan_broadcast_per_layer():
    params = _params(scan=True)
    scales = ft.layerwise_lr_scales(params, 3, 0.5)
    s = scales["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert s.shape == (3, 1, 1)
    np.testing.assert_allclose(s.ravel(), [0.125, 0.25, 0.5])
    grads = jax.tree.map(jnp.ones_like, params)
    scaled, _ = optimizer.scale_by_tree(scales).update(grads, optax.EmptyState())
    np.testing.assert_allclose(scaled["encoder"]["blocks"]["mlp"]["fc1"]["kernel"][:, 0, 0], [0.125, 0.25, 0.5])


def test_optimizer_applies_the_layer_scales():
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), _params())
    config = type(
        "Opt",
        (),
        dict(
            lr=1e-3,
            warmup_steps=0,
            decay="cosine",
            end_lr_ratio=0.0,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.0,
            clip_norm=0.0,
        ),
    )
    assert ft.count_blocks(params["encoder"]) == 3
    tx, _ = optimizer.make_optimizer(config, 10, lr_scales=lambda p: ft.layerwise_lr_scales(p, 3, 0.5))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    u0 = float(updates["encoder"]["block_0"]["mlp"]["fc2"]["bias"][0])
    u2 = float(updates["encoder"]["block_2"]["mlp"]["fc2"]["bias"][0])
    uh = float(updates["head"]["bias"][0])
    np.testing.assert_allclose([u0 / uh, u2 / uh], [0.125, 0.5], rtol=1e-5)


def test_class_balanced_weights_match_ast():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    w = ft.class_balanced_weights(labels)
    expected = [1000 / 3.01, 1000 / 3.01 + 1000 / 1.01, 1000 / 1.01, 1000 / 3.01]  # counts 3, 1, 1
    np.testing.assert_allclose(w, expected)
    idx = ft.balanced_sample_indices(np.random.default_rng(0), w, 20000)
    freq = np.bincount(idx, minlength=4) / 20000
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.01)
    with pytest.raises(ValueError, match="positive sum"):
        ft.balanced_sample_indices(np.random.default_rng(0), np.zeros(3), 5)


def test_mixup_mixes_with_the_reversed_batch():
    x = jnp.arange(4.0)[:, None, None] * jnp.ones((4, 3, 2))
    y = jnp.eye(4)
    valid = jnp.ones((4, 3), bool).at[0, 2].set(False).at[3, 2].set(False)
    mix = jax.jit(augment.batch_mixup, static_argnames=("alpha", "prob"))
    mx, mv, my = mix(jax.random.key(0), x, valid, y, alpha=0.8, prob=1.0)
    lam = float(my[0, 0])
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mx[:, 0, 0], lam * np.arange(4) + (1 - lam) * np.arange(4)[::-1], rtol=1e-5)
    np.testing.assert_allclose(my[0], [lam, 0, 0, 1 - lam], rtol=1e-5)
    np.testing.assert_array_equal(mv[:, 2], [False, True, True, False])
    nx, _, ny = mix(jax.random.key(0), x, valid, y, alpha=0.8, prob=0.0)
    np.testing.assert_array_equal(nx, x)
    np.testing.assert_array_equal(ny, y)


def test_spec_augment_masks_one_band_and_one_span_per_clip():
    x = jnp.ones((64, 100, 40))
    spec = jax.jit(augment.spec_augment, static_argnames=("freq_param", "time_param"))
    out = np.asarray(spec(jax.random.key(1), x, freq_param=8.0, time_param=30.0))
    freq_masked = (out == 0).all(axis=1)  # [B, mel]: bins zero over all frames
    time_masked = (out == 0).all(axis=2)  # [B, T]
    for f, t in zip(freq_masked, time_masked):
        for row, limit in ((f, 8), (t, 30)):
            idx = np.flatnonzero(row)
            assert len(idx) < limit and (len(idx) == 0 or (np.diff(idx) == 1).all())  # one contiguous band
    assert freq_masked.sum(1).mean() > 2 and time_masked.sum(1).mean() > 8  # ~ param / 2 on average
    assert ((out == 0) == (freq_masked[:, None, :] | time_masked[:, :, None])).all()


def test_losses_and_label_smoothing():
    logits = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = -(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))
    np.testing.assert_allclose(ft.classification_loss(logits, labels, multilabel=True), bce.sum() / 3, rtol=1e-5)
    one_hot = jnp.asarray([[1.0, 0, 0], [0, 0, 1.0]])
    smooth = ft.smooth_labels(one_hot, 0.1)
    np.testing.assert_allclose(smooth[0], [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], rtol=1e-6)
    logp = jax.nn.log_softmax(logits)
    torch_ce = np.mean([0.9 * -logp[0, 0] + 0.1 * -logp[0].mean(), 0.9 * -logp[1, 2] + 0.1 * -logp[1].mean()])
    np.testing.assert_allclose(ft.classification_loss(logits, smooth, multilabel=False), torch_ce, rtol=1e-5)


def test_classifier_head_on_cls_with_fc_norm():
    encoder = AudioViT(**TINY)
    enc_params = nn.unbox(jax.jit(encoder.init)(jax.random.key(0), FEATS, VALID)["params"])
    out = encoder.apply({"params": enc_params}, FEATS, VALID)
    enc = ft.pool(out, "cls")
    head = ft.ClassifierHead(5)
    params = nn.unbox(jax.jit(head.init)(jax.random.key(1), enc)["params"])  # real init: zero head bias
    logits = head.apply({"params": params}, enc)
    x = (enc - enc.mean(-1, keepdims=True)) / jnp.sqrt(enc.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(logits, x @ params["head"]["kernel"] + params["head"]["bias"], atol=1e-4)
    assert float(jnp.abs(params["head"]["bias"]).max()) == 0.0
    plain = ft.ClassifierHead(5, norm=False)
    p = nn.unbox(plain.init(jax.random.key(1), enc)["params"])
    assert set(p) == {"head"}
    np.testing.assert_allclose(plain.apply({"params": p}, enc), enc @ p["head"]["kernel"], atol=1e-5)


def test_pooling_of_valid_frames():
    frames = jnp.asarray([[[1.0], [3.0], [100.0]], [[-2.0], [4.0], [6.0]]])
    valid = jnp.asarray([[True, True, False], [True, True, True]])
    out = {"frames": frames, "valid": valid}
    np.testing.assert_allclose(ft.pool(out, "mean")[:, 0], [2.0, 8.0 / 3])
    np.testing.assert_allclose(ft.pool(out, "max_mean")[:, 0], [3.0 + 2.0, 6.0 + 8.0 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="no CLS token"):
        ft.pool(out, "cls")
    with pytest.raises(ValueError, match="pooling='max'"):
        ft.pool(out, "max")
