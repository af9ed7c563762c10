"""wav2vec 2.0 objective: distractors, contrastive loss vs numpy, objective under jit, configs."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiossl_jax import config_loader
from audiossl_jax.objectives import registry
from audiossl_jax.objectives.wav2vec2 import (
    contrastive_logits,
    contrastive_loss,
    cross_contrastive_logits,
    has_negatives,
    sample_cross_negative_indices,
    sample_negative_indices,
)

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "wav2vec2_conformer.py")


def _config(variant):
    return config_loader.load_config(f"{CONFIG}:{variant}")


def _batch(lengths=(64, 41), mel=8):
    length = max(lengths)
    return {
        "features": jax.random.normal(jax.random.key(0), (len(lengths), length, mel)),
        "valid": jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None],
        "labels": jnp.zeros((len(lengths), 3)),
    }


def test_negatives_come_from_other_candidates_of_the_same_clip():
    candidates = np.zeros((3, 12), bool)
    candidates[0, [1, 2, 3, 7, 9]] = True
    candidates[1, 4:12] = True
    candidates[2, 5] = True  # a single candidate: no distractor possible
    idx = np.asarray(sample_negative_indices(jax.random.key(0), jnp.asarray(candidates), 200))
    assert idx.shape == (3, 12, 200)
    for b in (0, 1):
        cand = set(np.flatnonzero(candidates[b]))
        for t in cand:
            drawn = set(idx[b, t].tolist())
            assert drawn == cand - {t}  # every other candidate drawn (200 draws), never t itself
    counts = np.bincount(idx[1, 4].ravel(), minlength=12)[5:12]
    assert counts.min() > 10  # roughly uniform over the 7 others (200 / 7 ~ 29 each)
    np.testing.assert_array_equal(has_negatives(jnp.asarray(candidates))[:, 0, 0], [True, True, False])


def test_cross_sample_negatives_come_from_candidates_of_other_clips():
    candidates = np.zeros((3, 12), bool)
    candidates[0, [1, 2, 3]] = True
    candidates[1, 4:12] = True  # clip 2 has no candidate: never a usable source
    clip, frame, ok = (
        np.asarray(a) for a in sample_cross_negative_indices(jax.random.key(0), jnp.asarray(candidates), 300)
    )
    assert clip.shape == frame.shape == ok.shape == (3, 12, 300)
    assert not np.any(clip == np.arange(3)[:, None, None])  # never the frame's own clip
    assert np.all(candidates[clip[ok], frame[ok]])  # usable draws are candidates of the drawn clip
    np.testing.assert_array_equal(ok, clip != 2)
    drawn = {(c, f) for c, f in zip(clip[0, 0][ok[0, 0]], frame[0, 0][ok[0, 0]])}
    assert drawn == {(1, f) for f in range(4, 12)}  # all of clip 1's candidates (uniform, 300 draws)
    assert {(c, f) for c, f in zip(clip[1, 5], frame[1, 5])} >= {(0, 1), (0, 2), (0, 3)}
    single = sample_cross_negative_indices(jax.random.key(1), jnp.ones((1, 4), bool), 3)[2]
    assert not np.any(np.asarray(single))  # one clip in the batch: no cross-clip distractor


def test_cross_contrastive_logits_match_numpy():
    rng = np.random.default_rng(1)
    context = rng.normal(size=(2, 3, 4)).astype(np.float32)
    targets = rng.normal(size=(2, 3, 4)).astype(np.float32)
    clip = rng.integers(0, 2, size=(2, 3, 2))
    frame = rng.integers(0, 3, size=(2, 3, 2))
    mask = np.ones((2, 3, 2), bool)
    mask[1, 2, 0] = False
    got = np.asarray(
        cross_contrastive_logits(
            jnp.asarray(context), jnp.asarray(targets), jnp.asarray(clip), jnp.asarray(frame), jnp.asarray(mask), 0.1
        )
    )
    for b, t, k in np.ndindex(2, 3, 2):
        want = _np_cos(context[b, t], targets[clip[b, t, k], frame[b, t, k]]) / 0.1 if mask[b, t, k] else -np.inf
        np.testing.assert_allclose(got[b, t, k], want, rtol=1e-5)


def _np_cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def test_contrastive_loss_matches_numpy_with_given_distractors():
    # idx draws the positive frame itself as an unmasked distractor in places: it must tie with the
    # positive (not counted correct) at every XLA optimisation level and on every CPU
    rng = np.random.default_rng(0)
    context = rng.normal(size=(2, 5, 4)).astype(np.float32)
    targets = rng.normal(size=(2, 5, 4)).astype(np.float32)
    idx = rng.integers(0, 5, size=(2, 5, 3))
    neg_mask = np.ones((2, 5, 3), bool)
    neg_mask[0, 1, 2] = False  # e.g. a distractor equal to the positive
    weights = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
    tau = 0.1

    logits = contrastive_logits(
        jnp.asarray(context), jnp.asarray(targets), jnp.asarray(idx), jnp.asarray(neg_mask), tau
    )
    loss, acc = contrastive_loss(logits, jnp.asarray(weights))

    nll, correct = [], []
    for b in range(2):
        for t in range(5):
            if not weights[b, t]:
                continue
            row = [_np_cos(context[b, t], targets[b, t]) / tau]
            row += [
                _np_cos(context[b, t], targets[b, j]) / tau if m else -np.inf for j, m in zip(idx[b, t], neg_mask[b, t])
            ]
            row = np.asarray(row)
            nll.append(-(row[0] - np.log(np.sum(np.exp(row - row.max()))) - row.max()))
            correct.append(row[0] > row[1:].max())
    np.testing.assert_allclose(logits[0, 1, 3], -np.inf)
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(acc, np.mean(correct), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    config = _config("tiny")
    config.model.num_layers = 1  # halves the compile; the block stack is tested in test_conformer*.py
    config.objective.feature_penalty_weight = 1.0  # non-zero, to check how the loss combines terms
    objective = registry.build(config)
    batch = _batch()
    state = jax.jit(objective.init)(jax.random.key(0), batch)
    grad_fn = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))  # compiled once, shared
    return objective, nn.unbox(state["params"]), state["aux"], batch, grad_fn


def test_objective_loss_and_grad_under_jit(tiny):
    objective, params, aux, batch, grad_fn = tiny
    assert aux == {}
    (loss, (metrics, new_aux)), grads = grad_fn(params, aux, batch, jax.random.key(1), jnp.int32(0))
    assert new_aux == {}
    assert set(metrics) == {
        "loss",
        "contrastive_loss",
        "diversity_loss",
        "feature_penalty",
        "contrastive_accuracy",
        "code_perplexity",
        "prob_perplexity",
        "gumbel_temperature",
        "mask_fraction",
    }
    assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
    m = {k: float(v) for k, v in metrics.items()}
    total = (
        m["contrastive_loss"]
        + objective.diversity_weight * m["diversity_loss"]
        + objective.feature_penalty_weight * m["feature_penalty"]
    )
    np.testing.assert_allclose(m["loss"], total, rtol=1e-5)
    assert m["feature_penalty"] > 0
    assert m["gumbel_temperature"] == 2.0 and 0.2 < m["mask_fraction"] < 0.9
    assert 0 <= m["contrastive_accuracy"] <= 1 and 0 < m["diversity_loss"] < 1
    grad_norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads)
    assert all(np.isfinite(jax.tree.leaves(grad_norms)))
    for path in (
        ("encoder", "mask_emb"),
        ("encoder", "input_projection", "kernel"),
        ("quantizer", "logits", "kernel"),
        ("quantizer", "codebook"),
        ("final_projection", "kernel"),
    ):
        node = grad_norms
        for key in path:
            node = node[key]
        assert node > 0, path
    assert objective.update_aux(params, aux, None, jnp.int32(0)) is aux


def test_cross_sample_negatives_only_add_distractors(tiny):
    """Same rng: the same masks, targets and same-clip distractors, plus cross-clip ones, so every
    frame's cross-entropy can only grow."""
    objective, params, aux, batch, _ = tiny
    rng = jax.random.key(1)
    base_metrics = objective.loss(params, aux, batch, rng, jnp.int32(0))[1][0]
    cross = dataclasses.replace(objective, cross_sample_negatives=7)
    cross_metrics = cross.loss(params, aux, batch, rng, jnp.int32(0))[1][0]
    assert np.isfinite(float(cross_metrics["contrastive_loss"]))
    assert float(cross_metrics["contrastive_loss"]) > float(base_metrics["contrastive_loss"])
    assert float(cross_metrics["mask_fraction"]) == float(base_metrics["mask_fraction"])


def test_a_few_steps_reduce_the_loss(tiny):
    objective, params, aux, batch, grad_fn = tiny
    opt = optax.adam(3e-3)
    rng = jax.random.key(7)  # fixed masks/distractors/noise: the same loss function every step

    @jax.jit
    def update(params, grads, opt_state):
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    losses = []
    for _ in range(12):
        (_, (metrics, _)), grads = grad_fn(params, aux, batch, rng, jnp.int32(0))
        params, opt_state = update(params, grads, opt_state)
        losses.append(float(metrics["contrastive_loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_embed_outputs(tiny):
    objective, params, aux, batch, _ = tiny
    out = jax.jit(objective.embed)(params, aux, batch["features"], batch["valid"])
    assert out["frames"].shape == (2, 16, 32) and out["clip"].shape == (2, 32)
    np.testing.assert_array_equal(out["valid"].sum(1), [16, 11])
    np.testing.assert_allclose(out["clip"][1], out["frames"][1, :11].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["frames"][1, 11:], 0.0)


@pytest.mark.parametrize("variant", ["S", "L", "local", "tiny"])
def test_every_config_variant_builds_and_initialises(variant):
    config = _config(variant)
    assert config.method == "wav2vec2"
    objective = registry.build(config)
    shapes = jax.eval_shape(objective.init, jax.random.key(0), _batch((40, 40), mel=64))
    params = nn.unbox(shapes["params"])
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    enc = config.model
    assert params["encoder"]["input_projection"]["kernel"].shape == (4 * 64, enc.d_model)
    assert params["quantizer"]["codebook"].shape == (
        enc.quantizer_groups * enc.quantizer_vars,
        enc.quantizer_dim // enc.quantizer_groups,
    )
    if variant == "S":
        assert enc.d_model == 256 and enc.num_layers == 12 and enc.first_kernel_size == 31
        assert 15e6 < count < 30e6, count
    if variant == "tiny":
        assert count < 200_000, count


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="local"):
        _config("XL")


def test_embed_average_is_the_mean_of_the_blocks_clip_embeddings():
    """clip ("average") of a 2-block encoder = mean of block 1's clip (a 1-block encoder with the same
    weights) and block 2's clip (embed_layers="last")."""
    import dataclasses

    config = _config("tiny")
    config.model.num_layers = 2
    two = registry.build(config)
    config.model.num_layers = 1
    one = registry.build(config)
    batch = _batch()
    params = nn.unbox(jax.jit(two.init)(jax.random.key(0), batch)["params"])
    one_params = jax.tree.map(lambda x: x, params)
    del one_params["encoder"]["layers"]["block_1"]
    embed = lambda obj, p: obj.embed(p, {}, batch["features"], batch["valid"])["clip"]  # noqa: E731
    average = embed(two, params)
    last = embed(dataclasses.replace(two, embed_layers="last"), params)
    first = embed(dataclasses.replace(one, embed_layers="last"), one_params)
    np.testing.assert_allclose(average, (first + last) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(average, last)


def test_input_targets_are_fixed_random_projection_codes():
    """model.quantizer_input="input": the codes are the argmax of the frozen logits projection of the
    stacked input frames (no Gumbel noise, no gradient into that projection or the input path), while
    the codebook and the encoder still learn from the contrastive loss."""
    config = _config("tiny")
    config.model.quantizer_input = "input"
    config.model.num_layers = 1
    objective = registry.build(config)
    batch = _batch()
    variables = objective.init(jax.random.key(0), batch)
    params = nn.unbox(variables["params"])
    (_, (metrics, _)), grads = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))(
        params, {}, batch, jax.random.key(1), jnp.int32(0)
    )
    q = grads["quantizer"]
    assert float(jnp.abs(q["logits"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(q["logits"]["bias"]).max()) == 0.0
    assert float(jnp.linalg.norm(q["codebook"])) > 0
    assert float(jnp.linalg.norm(grads["encoder"]["input_projection"]["kernel"])) > 0
    # The codes: argmax per group of the stacked input through the logits projection, with any rng.
    from audiossl_jax.models.conformer import stack_frames

    stacked, valid = stack_frames(batch["features"], batch["valid"], config.model.stack)
    w, b = params["quantizer"]["logits"]["kernel"], params["quantizer"]["logits"]["bias"]
    g, v = config.model.quantizer_groups, config.model.quantizer_vars
    expected = jnp.argmax((stacked @ w + b).reshape(*stacked.shape[:-1], g, v), axis=-1)
    span = objective._span_mask(jax.random.key(2), batch["valid"])
    for rng in (3, 4):
        _, targets, _ = objective.model.apply(
            {"params": params},
            batch["features"],
            batch["valid"],
            span,
            jnp.float32(2.0),
            deterministic=False,
            rngs={"dropout": jax.random.key(rng), "gumbel": jax.random.key(rng)},
        )
        np.testing.assert_array_equal(
            np.asarray(targets["codes"])[np.asarray(valid)], np.asarray(expected)[np.asarray(valid)]
        )
    with pytest.raises(ValueError, match="quantizer_input"):
        config.model.quantizer_input = "waveform"
        registry.build(config)
