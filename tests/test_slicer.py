"""SLICER objective: configs, random-resize-crop vs PyTorch, init/loss/grad/update_aux under jit,
no gradient into the teacher, symmetry in the two views, embed."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax import config_loader
from audiossl_jax.data import augment
from audiossl_jax.models import cnn_encoder
from audiossl_jax.objectives import registry, slicer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "slicer.npz")


def slicer_config(arg):
    return config_loader.load_config(os.path.join(REPO, "configs", "slicer.py") + (f":{arg}" if arg else ""))


def make_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, t, mel = config.data.batch_size, config.data.crop_frames, config.model.num_mel_bins
    valid = np.ones((b, t), bool)
    valid[-1, t // 2 :] = False
    features = rng.normal(size=(b, t, mel)).astype(np.float32) * valid[..., None]
    return {"features": jnp.asarray(features), "valid": jnp.asarray(valid), "labels": jnp.zeros((b, 3))}


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "arg, queue, bank",
    [
        ("paper", (65536, 128), (2048, 96, 64)),
        ("local", (256, 128), None),  # no mixup / k-mix: no bank
        ("cpu", (256, 128), (256, 192, 64)),  # mixup: a bank
        ("tiny", (32, 8), (12, 32, 64)),
        ("tiny,encoder=conformer", (32, 8), (12, 32, 64)),
        ("tiny,encoder=vit", (32, 8), (12, 32, 64)),
    ],
)
def test_every_config_builds_and_initialises_abstractly(arg, queue, bank):
    config = slicer_config(arg)
    objective = registry.build(config)
    batch = (
        jax.eval_shape(lambda: make_batch(config))
        if arg != "paper"
        else {"features": jax.ShapeDtypeStruct((2, 96, 64), jnp.float32), "valid": jax.ShapeDtypeStruct((2, 96), bool)}
    )
    state = jax.eval_shape(objective.init, jax.random.key(0), batch)
    assert state["aux"]["queue"]["keys"].value.shape == queue
    if bank is None:
        assert "bank" not in state["aux"]
    else:
        assert state["aux"]["bank"]["features"].value.shape == bank
    assert jax.tree.structure(nn.unbox(state["aux"]["teacher"])) == jax.tree.structure(nn.unbox(state["params"]))
    if arg.startswith("tiny"):  # the whole loss traces with every encoder
        loss, (metrics, _) = jax.eval_shape(
            objective.loss, nn.unbox(state["params"]), nn.unbox(state["aux"]), batch, jax.random.key(0), jnp.int32(0)
        )
        assert loss.shape == () and metrics["_carry"]["keys"].shape == (2 * config.data.batch_size, 8)
        embedded = jax.eval_shape(
            objective.embed, nn.unbox(state["params"]), nn.unbox(state["aux"]), batch["features"], batch["valid"]
        )
        assert embedded["clip"].shape[0] == config.data.batch_size


def test_config_parsing_is_strict():
    assert slicer_config(None).objective.queue_size == 65536  # default variant: paper
    with pytest.raises(ValueError, match=r"\('paper', 'local', 'cpu', 'tiny'\)"):
        slicer_config("huge")
    with pytest.raises(ValueError, match="unknown option"):
        slicer_config("tiny,queue=3")
    with pytest.raises(ValueError, match="encoder"):
        slicer_config("tiny,encoder=rnn")
    assert slicer_config("local,encoder=vit").model.encoder == "vit"


def test_probe_windows_cover_the_clips():
    """paper: 0.95 s training crops, whole 10 s clips probed; local: the whole 4 s demo clip for both."""
    paper, local = slicer_config("paper"), slicer_config("local")
    assert (paper.data.crop_frames, paper.probe.crop_frames) == (96, 1001)
    assert local.data.crop_frames == local.probe.crop_frames == 400
    cpu = slicer_config("cpu")  # real audio: 1.9 s training crops, whole 4 s clips probed
    assert (cpu.data.crop_frames, cpu.probe.crop_frames) == (192, 400)
    assert slicer_config("tiny").probe.crop_frames is None  # falls back to the pre-training crop


def test_build_rejects_inconsistent_sizes():
    config = slicer_config("tiny")
    config.objective.queue_size = 2 * config.data.batch_size - 1
    with pytest.raises(ValueError, match="queue_size"):
        registry.build(config)
    config = slicer_config("tiny")
    config.objective.augment.kmix_fit_examples = config.objective.augment.bank_size + 1
    with pytest.raises(ValueError, match="kmix_fit_examples"):
        registry.build(config)


# ----------------------------------------------------------------------------- random-resize-crop
def test_resize_crop_matches_pytorch_bicubic():
    ref = np.load(FIXTURE)
    lms = ref["rrc_input"][0]  # [mel, T]
    mel, frames = lms.shape
    canvas_f, canvas_t = mel, int(frames * 1.5)

    @jax.jit
    def crop(top, left, height, width):  # byol_random_resize_crop's resize of one clip, given its crop
        along_t = augment.resize_taps(frames, frames, canvas_t, left, width)
        along_f = augment.resize_taps(mel, mel, canvas_f, top, height)
        return augment.resize_along(augment.resize_along(jnp.asarray(lms.T), *along_t, 0), *along_f, 1)  # [T, mel]

    for params, expected in zip(ref["rrc_params"], ref["rrc_output"]):
        got = crop(*(jnp.int32(p) for p in params))
        np.testing.assert_allclose(np.asarray(got).T, expected[0], rtol=1e-4, atol=1e-5)


def test_crop_parameters_follow_byol_a_ranges():
    starts, lengths = jax.vmap(lambda k: augment.crop_parameters(k, 24, 36, (0.6, 1.5)))(
        jax.random.split(jax.random.key(0), 2000)
    )
    starts, lengths = np.asarray(starts), np.asarray(lengths)
    assert lengths.min() == int(0.6 * 24) and lengths.max() == 35  # floor(U(0.6, 1.5) * 24) <= 35
    assert starts.min() == 0 and np.all(starts + lengths <= 36)
    assert (starts[lengths == 20] == 16).any()  # the last start, canvas - length, is reachable


# ----------------------------------------------------------------------------- objective
@pytest.fixture(scope="module")
def tiny():
    config = slicer_config("tiny")
    config.model.dropout = 0.0  # the symmetry test needs the same network function for both views
    objective = registry.build(config)
    batch = make_batch(config)
    state = jax.jit(objective.init)(jax.random.key(0), batch)
    params, aux = nn.unbox(state["params"]), nn.unbox(state["aux"])

    def step(params, aux, batch, rng, step):
        (loss, (metrics, new_aux)), grads = jax.value_and_grad(objective.loss, has_aux=True)(
            params, aux, batch, rng, step
        )
        return loss, metrics, new_aux, grads

    return config, objective, batch, params, aux, jax.jit(step)


def test_loss_grad_and_metrics_under_jit(tiny):
    config, objective, batch, params, aux, step = tiny
    loss, metrics, new_aux, grads = step(params, aux, batch, jax.random.key(1), jnp.int32(0))
    assert np.isfinite(float(loss))
    expected = {
        "loss",
        "instance_loss",
        "cluster_loss",
        "instance_accuracy",
        "cluster_entropy",
        "momentum",
        "kmix_fitted",
        "_carry",
    }
    assert set(metrics) == expected
    np.testing.assert_allclose(float(loss), float(metrics["instance_loss"] + metrics["cluster_loss"]), rtol=1e-6)
    assert 0.0 <= float(metrics["instance_accuracy"]) <= 1.0
    assert 0.0 < float(metrics["cluster_entropy"]) <= np.log(config.model.clusters) + 1e-5
    assert metrics["_carry"]["keys"].shape == (2 * config.data.batch_size, config.model.instance_dim)
    # every encoder parameter learns, except the conv biases: the BatchNorm after each conv cancels
    # them in train mode, so their gradient is exactly 0 (models/cnn_encoder.py, MaskedBatchNorm)
    for path, g in jax.tree_util.tree_flatten_with_path(grads["encoder"])[0]:
        name = jax.tree_util.keystr(path)
        if "['conv']['bias']" in name:
            assert float(jnp.abs(g).sum()) == 0.0, name
        else:
            assert float(jnp.abs(g).sum()) > 0, name
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["cluster_head"]))
    # the forward pass updated the student's and the teacher's BatchNorm statistics
    for who in ("student", "teacher"):
        before = jax.tree.leaves(aux["batch_stats"][who])
        after = jax.tree.leaves(new_aux["batch_stats"][who])
        assert any(not np.allclose(a, b) for a, b in zip(before, after))
    again = step(params, aux, batch, jax.random.key(1), jnp.int32(0))[0]
    assert float(again) == float(loss)  # deterministic given the rng


def test_mlp_instance_head(tiny):
    """`model.instance_hidden` > 0: MoCo v2's MLP instance head; the encoder's init is unchanged."""
    linear_config, _, batch, linear_params, _, _ = tiny
    config = linear_config.copy_and_resolve_references()  # the fixture's tiny config, dropout 0
    config.model.instance_hidden = 24
    objective = registry.build(config)
    state = jax.jit(objective.init)(jax.random.key(0), batch)
    params, aux = nn.unbox(state["params"]), nn.unbox(state["aux"])
    head = params["instance_head"]
    assert head["hidden"]["kernel"].shape == (config.model.dim, 24)
    assert head["proj"]["kernel"].shape == (24, config.model.instance_dim)
    assert set(linear_params["instance_head"]) == {"proj"}
    same = jax.tree.map(np.array_equal, params["encoder"], linear_params["encoder"])
    assert all(jax.tree.leaves(same))  # same random encoder as the linear-head run of that seed
    # the head is a ReLU MLP of the clip embedding
    variables = {"params": params, "batch_stats": aux["batch_stats"]["student"]}
    (q, _), _ = objective.net.apply(variables, batch["features"], batch["valid"], mutable=["batch_stats"])
    clip = objective.net.apply(
        variables, batch["features"], batch["valid"], True, method=slicer.SlicerNet.encode, mutable=["batch_stats"]
    )[0]["clip"]
    hidden = jax.nn.relu(clip @ head["hidden"]["kernel"] + head["hidden"]["bias"])
    np.testing.assert_allclose(q, hidden @ head["proj"]["kernel"] + head["proj"]["bias"], rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda p: objective.loss(p, aux, batch, jax.random.key(1), jnp.int32(0))[0])(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["instance_head"]))
    config.model.instance_hidden = -1
    with pytest.raises(ValueError, match="instance_hidden"):
        registry.build(config)


@pytest.mark.xla_default  # bit-equal gradients of two programs: holds as XLA compiles them by default
def test_bn_stats_from_the_clean_batch(tiny):
    """bn_stats_from="clean": the student's running statistics come from one train-mode encoder pass
    on the un-augmented batch (from the previous statistics), not from the views; loss, gradients and
    the teacher's statistics are the same as with "views"."""
    config, objective, batch, params, aux, step = tiny
    clean = dataclasses.replace(objective, bn_stats_from="clean")
    rng = jax.random.key(1)
    loss_v, _, aux_v, grads_v = step(params, aux, batch, rng, jnp.int32(0))
    (loss_c, (_, aux_c)), grads_c = jax.jit(jax.value_and_grad(clean.loss, has_aux=True))(
        params, aux, batch, rng, jnp.int32(0)
    )
    assert float(loss_c) == float(loss_v)
    jax.tree.map(np.testing.assert_array_equal, grads_c, grads_v)
    jax.tree.map(np.testing.assert_array_equal, aux_c["batch_stats"]["teacher"], aux_v["batch_stats"]["teacher"])
    _, updates = objective.net.apply(
        {"params": params, "batch_stats": aux["batch_stats"]["student"]},
        batch["features"],
        batch["valid"],
        True,
        method=slicer.SlicerNet.encode,
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats"],
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        aux_c["batch_stats"]["student"],
        updates["batch_stats"],
    )
    assert any(
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(aux_c["batch_stats"]["student"]), jax.tree.leaves(aux_v["batch_stats"]["student"])
        )
    )
    config = slicer_config("tiny")
    config.objective.bn_stats_from = "eval"
    with pytest.raises(ValueError, match="bn_stats_from"):
        registry.build(config)


def test_clean_bn_momentum_averages_over_more_batches(tiny):
    """clean_bn_momentum m: running = m * previous + (1 - m) * this clean batch's statistics, for
    every BatchNorm (the batch statistics recovered from the default momentum-0.9 pass)."""
    config, objective, batch, params, aux, _ = tiny
    rng = jax.random.key(1)
    stats = {"default": None, 0.99: None}
    for momentum in stats:
        o = dataclasses.replace(
            objective, bn_stats_from="clean", clean_bn_momentum=None if momentum == "default" else momentum
        )
        stats[momentum] = o.loss(params, aux, batch, rng, jnp.int32(0))[1][1]["batch_stats"]["student"]
    previous = aux["batch_stats"]["student"]
    batch_stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, stats["default"], previous)
    want = jax.tree.map(lambda b, old: 0.99 * old + 0.01 * b, batch_stats, previous)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), stats[0.99], want)
    for bad in ({"clean_bn_momentum": 1.0, "bn_stats_from": "clean"}, {"clean_bn_momentum": 0.99}):
        config = slicer_config("tiny")
        config.objective.update(bad)
        with pytest.raises(ValueError, match="clean_bn_momentum"):
            registry.build(config)


def test_no_gradient_reaches_the_teacher_or_the_queue(tiny):
    config, objective, batch, params, aux, _ = tiny

    def loss(teacher, queue_keys):
        a = {**aux, "teacher": teacher, "queue": {**aux["queue"], "keys": queue_keys}}
        return objective.loss(params, a, batch, jax.random.key(2), jnp.int32(0))[0]

    teacher_grads, queue_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(aux["teacher"], aux["queue"]["keys"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grads))
    assert float(jnp.abs(queue_grads).max()) == 0.0


def test_update_aux_ema_queue_and_bank(tiny):
    config, objective, batch, params, aux, step = tiny
    _, metrics, new_aux, _ = step(params, aux, batch, jax.random.key(3), jnp.int32(0))
    student = jax.tree.map(lambda p: p + 1.0, params)  # as if the optimizer moved the student
    out = jax.jit(objective.update_aux)(student, new_aux, metrics["_carry"], jnp.int32(0))
    m = config.objective.momentum
    for t_new, t_old, s in zip(
        jax.tree.leaves(out["teacher"]), jax.tree.leaves(aux["teacher"]), jax.tree.leaves(student)
    ):
        np.testing.assert_allclose(t_new, m * t_old + (1 - m) * s, rtol=1e-6, atol=1e-7)
    n = 2 * config.data.batch_size
    keys = np.asarray(metrics["_carry"]["keys"])
    np.testing.assert_allclose(
        out["queue"]["keys"][:n], keys / np.linalg.norm(keys, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(out["queue"]["keys"][n:], aux["queue"]["keys"][n:])
    assert int(out["queue"]["ptr"]) == n
    assert int(out["bank"]["count"]) == config.data.batch_size
    np.testing.assert_array_equal(out["bank"]["features"][: config.data.batch_size], batch["features"])


def test_loss_is_symmetric_in_the_two_views(tiny, monkeypatch):
    config, objective, batch, params, aux, _ = tiny
    aux = {**aux, "teacher": jax.tree.map(lambda p: 0.9 * p, params)}  # teacher != student
    # The views come from the batch so that one compiled loss serves both orders.
    monkeypatch.setattr(
        slicer,
        "two_views",
        lambda rng, features, valid, bank, view: ((batch_views["a"], valid), (batch_views["b"], valid)),
    )
    batch_views = {}

    @jax.jit
    def losses(a, b):
        batch_views.update(a=a, b=b)
        loss, (metrics, _) = objective.loss(params, aux, batch, jax.random.key(6), jnp.int32(0))
        return jnp.stack([loss, metrics["instance_loss"], metrics["cluster_loss"]])

    rng = np.random.default_rng(5)
    a, b = (jnp.asarray(rng.normal(size=batch["features"].shape), jnp.float32) for _ in range(2))
    # atol: the instance loss here is ~0.011 = logsumexp(logits) - positive logit, with logits ~1 / 0.07;
    # that difference carries float32 rounding of ~1 ulp of 14 (1e-6) whichever view comes first.
    np.testing.assert_allclose(losses(a, b), losses(b, a), rtol=1e-5, atol=2e-6)

    # The student's query of one view is paired with the teacher's key of the *other* view.
    def heads_of(weights, stats, x):
        return objective._forward(weights, stats, x, batch["valid"], jax.random.key(0))[0]

    q1, q2 = (np.asarray(heads_of(params, aux["batch_stats"]["student"], x), np.float64) for x in (a, b))
    k1, k2 = (np.asarray(heads_of(aux["teacher"], aux["batch_stats"]["teacher"], x), np.float64) for x in (a, b))
    queue = np.asarray(aux["queue"]["keys"], np.float64)

    def moco(q, k):
        q, k = q / np.linalg.norm(q, axis=1, keepdims=True), k / np.linalg.norm(k, axis=1, keepdims=True)
        logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / config.objective.temperature
        return np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])

    np.testing.assert_allclose(float(losses(a, b)[1]), moco(q1, k2) + moco(q2, k1), rtol=1e-4)
    assert abs(moco(q1, k2) + moco(q2, k1) - moco(q1, k1) - moco(q2, k2)) > 1e-3


def test_embed_uses_the_student_encoder(tiny):
    config, objective, batch, params, aux, _ = tiny
    out = jax.jit(objective.embed)(params, aux, batch["features"], batch["valid"])
    frames = config.data.crop_frames // 8
    assert out["frames"].shape == (config.data.batch_size, frames, config.model.dim)
    assert out["clip"].shape == (config.data.batch_size, config.model.dim)
    assert out["valid"].shape == out["frames"].shape[:2]  # the frames' validity, as wav2vec2 and EAT return
    np.testing.assert_array_equal(out["valid"][-1], jnp.arange(frames) * 8 < config.data.crop_frames // 2)
    other_teacher = {**aux, "teacher": jax.tree.map(jnp.zeros_like, aux["teacher"])}
    again = jax.jit(objective.embed)(params, other_teacher, batch["features"], batch["valid"])
    np.testing.assert_array_equal(out["clip"], again["clip"])
    longer = jnp.concatenate([batch["features"]] * 3, axis=1)  # embed takes the full (longer) input
    long_out = jax.jit(objective.embed)(params, aux, longer, jnp.ones(longer.shape[:2], bool))
    assert long_out["frames"].shape[1] == 3 * config.data.crop_frames // 8


def test_embed_conv_blocks_append_pooled_conv_features(tiny):
    """embed_conv_blocks=(1, 2): clip = [FC clip, max + mean of block 1's and block 2's outputs over
    their valid frames], recomputed here block by block with numpy pooling; frames stay the FC's."""
    config, objective, batch, params, aux, _ = tiny
    wide = dataclasses.replace(objective, embed_conv_blocks=(2, 1))
    out = jax.jit(objective.embed)(params, aux, batch["features"], batch["valid"])
    got = jax.jit(wide.embed)(params, aux, batch["features"], batch["valid"])
    np.testing.assert_array_equal(got["frames"], out["frames"])
    dim = config.model.dim
    np.testing.assert_allclose(got["clip"][:, :dim], out["clip"], rtol=1e-6)

    stats = aux["batch_stats"]["student"]["encoder"]
    x = jnp.where(batch["valid"][..., None], batch["features"], 0)[..., None]
    valid, pooled = np.asarray(batch["valid"]), {}
    for i in range(config.model.blocks):
        block = cnn_encoder.ConvBlock(config.model.channels)
        x = block.apply(
            {"params": params["encoder"][f"block{i}"], "batch_stats": stats[f"block{i}"]}, x, jnp.asarray(valid), False
        )
        b, t, m, c = x.shape
        valid = valid[:, : 2 * t].reshape(b, t, 2).any(-1)
        f = np.asarray(x).reshape(b, t, m * c)
        pooled[i] = np.stack([f[j][valid[j]].max(0) + f[j][valid[j]].mean(0) for j in range(b)])
    want = np.concatenate([pooled[2], pooled[1]], axis=1)
    np.testing.assert_allclose(got["clip"][:, dim:], want, rtol=1e-5, atol=1e-6)
    for bad in ((3,), (1, 1)):
        c = slicer_config("tiny")
        c.objective.embed_conv_blocks = bad
        with pytest.raises(ValueError, match="embed_conv_blocks"):
            registry.build(c)
