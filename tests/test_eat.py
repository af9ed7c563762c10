"""EAT objective: targets and UFO loss vs numpy references of the reference code, jit/grad, EMA, configs."""

import dataclasses
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax import config_loader
from audiossl_jax.objectives import eat, ema, registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def eat_config(variant):
    return config_loader.load_config(os.path.join(REPO, "configs", f"eat.py:{variant}"))


# ---------------------------------------------------------------- numpy references


def np_instance_norm(x, eps=1e-5):  # torch F.instance_norm on [B, C, T] == per channel over T
    return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps)


def np_make_targets(layers, eps=1e-5):
    """EAT make_targets (instance_norm_target_layer, layer_norm_targets) on [K, B, T, D]."""
    y = np.mean([np_instance_norm(layer, eps) for layer in layers], axis=0)
    return (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + eps)


def np_reference_loss(pred, cls, targets, masked, cls_loss=1.0):
    """EAT forward + fairseq ModelCriterion + trainer normalisation, one GPU, no padding:
    (sum of frame losses + cls_loss * sample_size * sum of cls losses) / sample_size."""
    b, c, n, d = pred.shape
    scale = 1 / math.sqrt(d)
    y = np.repeat(targets, c, axis=0)  # y.repeat_interleave(clone_batch, 0)
    mb = masked.reshape(b * c, n)
    x = pred.reshape(b * c, n, d)
    frame_sum = ((x[mb] - y[mb]) ** 2 * scale).sum()
    sample_size = mb.sum()
    cls_target = np.repeat(targets.mean(1), c, axis=0)
    cls_sum = ((cls.reshape(b * c, d) - cls_target) ** 2 * scale * cls_loss * sample_size).sum()
    return frame_sum / sample_size, (frame_sum + cls_sum) / sample_size


# ---------------------------------------------------------------- pure pieces


def test_targets_match_reference_and_ignore_padding():
    rng = np.random.default_rng(0)
    layers = rng.normal(size=(3, 2, 10, 8)) * rng.uniform(0.5, 3, size=(3, 1, 1, 8)) + 2.0
    valid = np.ones((2, 10), bool)
    ours = eat.teacher_targets(jnp.asarray(layers, jnp.float32), jnp.asarray(valid))
    np.testing.assert_allclose(ours, np_make_targets(layers), atol=1e-4)
    valid[1, 6:] = False  # clip 1: last 4 patches are padding
    padded = layers.copy()
    padded[:, 1, 6:] = 1e3
    ours = np.asarray(eat.teacher_targets(jnp.asarray(padded, jnp.float32), jnp.asarray(valid)))
    np.testing.assert_allclose(ours[1, :6], np_make_targets(layers[:, 1:2, :6])[0], atol=1e-4)
    np.testing.assert_allclose(ours[0], np_make_targets(layers[:, :1])[0], atol=1e-4)


def test_ufo_loss_matches_the_reference_normalisation():
    rng = np.random.default_rng(1)
    b, c, n, d = 2, 3, 12, 8
    pred, cls, targets = rng.normal(size=(b, c, n, d)), rng.normal(size=(b, c, d)), rng.normal(size=(b, n, d))
    masked = rng.random((b, c, n)) < 0.8
    masked[..., :3] = False  # every clone keeps some patches
    frame, utterance = eat.ufo_losses(
        *(jnp.asarray(a, jnp.float32) for a in (pred, cls, targets)),
        jnp.asarray(masked),
        jnp.ones((b, n), bool),
        1 / math.sqrt(d),
    )
    ref_frame, ref_total = np_reference_loss(pred, cls, targets, masked)
    np.testing.assert_allclose(frame, ref_frame, rtol=1e-5)
    # the reference's utterance term weighs B*C clones (one GPU) against the mean frame loss
    np.testing.assert_allclose(frame + b * c * utterance, ref_total, rtol=1e-5)
    expected_utt = np.mean(
        [((cls[i, j] - targets[i].mean(0)) ** 2).sum() / math.sqrt(d) for i in range(b) for j in range(c)]
    )
    np.testing.assert_allclose(utterance, expected_utt, rtol=1e-5)


def test_ufo_loss_skips_padding_patches():
    rng = np.random.default_rng(2)
    b, c, n, d = 2, 2, 6, 4
    pred, cls, targets = rng.normal(size=(b, c, n, d)), rng.normal(size=(b, c, d)), rng.normal(size=(b, n, d))
    masked = np.ones((b, c, n), bool)
    valid = np.ones((b, n), bool)
    valid[1, 4:] = False
    frame, utterance = eat.ufo_losses(
        *(jnp.asarray(a, jnp.float32) for a in (pred, cls, targets)), jnp.asarray(masked), jnp.asarray(valid), 0.5
    )
    err = ((pred - targets[:, None]) ** 2).sum(-1) * 0.5
    w = masked & valid[:, None]
    np.testing.assert_allclose(frame, (err * w).sum() / w.sum(), rtol=1e-5)
    clip_t = np.stack([targets[0].mean(0), targets[1, :4].mean(0)])
    np.testing.assert_allclose(utterance, (((cls - clip_t[:, None]) ** 2).sum(-1) * 0.5).mean(), rtol=1e-5)


def test_variance_metric_matches_reference_compute_var():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 7, 4)) * 3
    counts = rng.integers(0, 3, size=(5, 7))
    rows = np.repeat(x.reshape(-1, 4), counts.reshape(-1), axis=0)
    ref = np.sqrt(rows.var(0, ddof=1) + 1e-6).mean()  # torch y.var(dim=0) is unbiased
    np.testing.assert_allclose(eat.weighted_channel_std(jnp.asarray(x), jnp.asarray(counts)), ref, rtol=1e-5)


def test_decoder_input_places_visible_tokens_and_noise():
    patches = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4) + 1
    visible = jnp.asarray([[0, 2, 5], [1, 3, 4]])
    grid = np.asarray(eat.decoder_input(patches, visible, 400, jax.random.key(0), 0.01))
    np.testing.assert_array_equal(grid[0, [0, 2, 5]], patches[0])
    np.testing.assert_array_equal(grid[1, [1, 3, 4]], patches[1])
    rest = np.delete(grid[0], [0, 2, 5], axis=0)
    assert abs(rest.std() - 0.01) < 1e-3 and abs(rest.mean()) < 1e-3
    zeros = np.asarray(eat.decoder_input(patches, visible, 6, jax.random.key(0), 0.0))
    np.testing.assert_array_equal(np.delete(zeros[0], [0, 2, 5], axis=0), 0.0)


def test_raw_clip_targets_keep_the_clip_content_and_ignore_padding():
    rng = np.random.default_rng(1)
    layers = rng.normal(size=(3, 2, 10, 8)) + rng.normal(size=(1, 2, 1, 8)) * 3  # a per-clip offset
    valid = np.ones((2, 10), bool)
    valid[1, 7:] = False
    padded = layers.copy()
    padded[:, 1, 7:] = 1e3
    ours = np.asarray(eat.raw_clip_targets(jnp.asarray(padded, jnp.float32), jnp.asarray(valid)))
    for b, n in ((0, 10), (1, 7)):
        y = layers[:, b, :n].mean((0, 1))
        np.testing.assert_allclose(ours[b], (y - y.mean()) / np.sqrt(y.var() + 1e-5), atol=1e-4)
    # EAT's clip target (the mean of the instance-normed frame targets) loses that offset
    normed = np.asarray(eat.teacher_targets(jnp.asarray(layers, jnp.float32), jnp.ones((2, 10), bool)))
    assert np.abs(normed.mean(1)).max() < 0.25 and np.abs(ours).max() > 0.99  # unit variance over D


# ---------------------------------------------------------------- the objective (tiny config)


@pytest.fixture(scope="module")
def tiny():
    config = eat_config("tiny")
    objective = registry.build(config)
    rng = np.random.default_rng(0)
    frames = np.arange(64)[None] < np.array([[64], [40]])  # clip 1: 24 frames of padding
    batch = {
        "features": jnp.asarray(rng.normal(size=(2, 64, 64)), jnp.float32),
        "valid": jnp.asarray(frames),
        "labels": jnp.zeros((2, 3), jnp.float32),
    }
    boxed = jax.jit(objective.init)(jax.random.key(0), batch)
    return config, objective, batch, boxed


def test_init_puts_the_teacher_in_aux(tiny):
    _, objective, _, boxed = tiny
    assert objective.name == "eat" and set(boxed["params"]) == {"encoder", "decoder"}
    assert set(boxed["aux"]) == {"teacher"}
    assert jax.tree.structure(boxed["aux"]["teacher"]) == jax.tree.structure(boxed["params"]["encoder"])
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(boxed["aux"]["teacher"]), nn.unbox(boxed["params"]["encoder"]))
    specs = nn.get_partition_spec(boxed["aux"]["teacher"])  # the teacher keeps logical axis names
    assert specs["block_0"]["mlp"]["fc1"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")


def test_loss_grad_under_jit_and_no_gradient_into_the_teacher(tiny):
    _, objective, batch, boxed = tiny
    v = nn.unbox(boxed)
    grad_fn = jax.jit(jax.value_and_grad(objective.loss, argnums=(0, 1), has_aux=True))
    (loss, (metrics, aux)), (g_params, g_aux) = grad_fn(v["params"], v["aux"], batch, jax.random.key(1), jnp.int32(0))
    assert np.isfinite(loss)
    assert set(metrics) == {"frame_loss", "utterance_loss", "ema_decay", "target_var", "pred_var"}
    o = objective
    np.testing.assert_allclose(
        loss,
        o.frame_loss_weight * metrics["frame_loss"] + o.utterance_loss_weight * metrics["utterance_loss"],
        rtol=1e-5,
    )
    np.testing.assert_allclose(metrics["ema_decay"], 0.9998, rtol=1e-7)
    for part in ("encoder", "decoder"):
        norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(g_params[part])]
        assert all(np.isfinite(norms)) and max(norms) > 0, part
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_aux))  # stop_gradient
    # the rng picks the masks: a new key changes the loss, the same key reproduces it
    again = grad_fn(v["params"], v["aux"], batch, jax.random.key(1), jnp.int32(0))[0][0]
    other = grad_fn(v["params"], v["aux"], batch, jax.random.key(2), jnp.int32(0))[0][0]
    assert float(again) == float(loss)
    assert abs(float(other) - float(loss)) > 1e-3 * abs(float(loss))


def test_update_aux_is_the_ema_of_the_student(tiny):
    _, objective, batch, boxed = tiny
    v = nn.unbox(boxed)
    student = jax.tree.map(lambda p: p + 1.0, v["params"])
    new = jax.jit(objective.update_aux)(student, v["aux"], None, jnp.int32(4))
    d = float(ema.ema_decay(5, objective.ema_start, objective.ema_end, objective.ema_anneal_steps))
    jax.tree.map(
        lambda t, old, s: np.testing.assert_allclose(t, d * old + (1 - d) * s, rtol=1e-5, atol=1e-6),
        new["teacher"],
        v["aux"]["teacher"],
        student["encoder"],
    )


def test_embed_uses_the_full_input(tiny):
    _, objective, batch, boxed = tiny
    v = nn.unbox(boxed)
    cls = dataclasses.replace(objective, embed_clip="cls")
    out = jax.jit(cls.embed)(v["params"], v["aux"], batch["features"], batch["valid"])
    w = batch["features"].shape[2] // 16  # mel patches per time step
    assert out["clip"].shape == (2, 32) and out["frames"].shape == (2, 4, w * 32)
    np.testing.assert_array_equal(out["valid"], [[1, 1, 1, 1], [1, 1, 1, 0]])
    enc = objective.encoder.apply({"params": v["params"]["encoder"]}, batch["features"], batch["valid"])
    np.testing.assert_allclose(out["clip"], enc["cls"], atol=1e-6)
    patches = np.asarray(enc["frames"]).reshape(2, 4, w, 32)  # time-major patch grid
    np.testing.assert_allclose(out["frames"][:, 2, 32:64], patches[:, 2, 1], atol=1e-6)  # 2nd mel patch
    assert objective.embed_clip == "mean"  # the configs' default: time mean of the frames
    clip = jax.jit(objective.embed)(v["params"], v["aux"], batch["features"], batch["valid"])["clip"]
    assert clip.shape == (2, w * 32)
    np.testing.assert_allclose(clip[1], patches[1, :3].reshape(3, -1).mean(0), atol=1e-5)  # valid frames only


def test_raw_utterance_target_changes_only_the_utterance_loss(tiny):
    _, objective, batch, boxed = tiny
    v = nn.unbox(boxed)
    raw = dataclasses.replace(objective, utterance_target="raw")
    args = (v["params"], v["aux"], batch, jax.random.key(1), jnp.int32(0))
    m_normed = jax.jit(objective.loss)(*args)[1][0]
    m_raw = jax.jit(raw.loss)(*args)[1][0]
    np.testing.assert_allclose(m_raw["frame_loss"], m_normed["frame_loss"], rtol=1e-6)
    assert abs(float(m_raw["utterance_loss"]) - float(m_normed["utterance_loss"])) > 1e-3


def test_encode_frames_are_the_embed_frames(tiny):
    """Fine-tuning pools `encode`'s frames: the same time steps x (mel patches x D) as `embed`'s."""
    _, objective, batch, boxed = tiny
    v = nn.unbox(boxed)
    out, state = objective.encode({"params": v["params"]["encoder"]}, batch["features"], batch["valid"])
    emb = objective.embed(v["params"], v["aux"], batch["features"], batch["valid"])
    assert state == {}
    np.testing.assert_allclose(out["frames"], emb["frames"], atol=1e-6)
    np.testing.assert_array_equal(out["valid"], emb["valid"])
    np.testing.assert_allclose(
        out["cls"],
        objective.encoder.apply({"params": v["params"]["encoder"]}, batch["features"], batch["valid"])["cls"],
        atol=1e-6,
    )


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("variant", ["base", "large", "finetune_base", "local", "tiny"])
def test_every_config_builds(variant):
    config = eat_config(variant)
    objective = registry.build(config)
    mel = 128 if variant in ("base", "large", "finetune_base") else 64
    batch = {
        "features": jax.ShapeDtypeStruct((1, config.data.crop_frames, mel), jnp.float32),
        "valid": jax.ShapeDtypeStruct((1, config.data.crop_frames), bool),
    }
    shapes = jax.eval_shape(objective.init, jax.random.key(0), batch)
    n_encoder = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"]["encoder"])))
    if variant == "base":  # ViT-B/16 on 1-channel 16x16 patches: 85.4M + patch embed + CLS
        assert 85e6 < n_encoder < 86.5e6, n_encoder
    if variant == "large":
        assert 300e6 < n_encoder < 305e6, n_encoder
    if variant == "local":  # retuned on the real-audio benchmark (docs/methods/eat.md)
        assert config.objective.utterance_loss_weight == 1.0
    else:  # the reference's cls_loss x clips per GPU x clones
        assert config.objective.utterance_loss_weight == config.objective.clone_batch * (
            12 if variant in ("base", "large", "finetune_base") else config.data.batch_size
        )


def test_unknown_variant_and_bad_fields_are_named():
    with pytest.raises(ValueError, match="choose one of"):
        eat_config("B/16")
    config = eat_config("tiny")
    config.objective.average_top_k_layers = 5
    with pytest.raises(ValueError, match="average_top_k_layers"):
        registry.build(config)
    config = eat_config("tiny")
    config.objective.target_site = "attn"
    with pytest.raises(ValueError, match="target_site"):
        registry.build(config)
