"""Audio ViT (EAT encoder): numpy reference forward, positions, patching, gathering, padding, FLOPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from audiossl_jax.models import posemb, vit
from audiossl_jax.parallel.rules import DEFAULT_RULES, LOGICAL_AXES

P = 16
TINY = dict(dim=32, depth=2, num_heads=2, patch_size=P)


def _features(b=2, t=64, mel=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, mel)), jnp.float32)


def _init(model, feats, valid=None, seed=0):
    """Random params with the model's shapes (no init compile); LayerNorm scales around 1."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), feats, valid))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, s):
        centre = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(centre + 0.2 * rng.normal(size=s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


_JITTED = {}


def _apply(model, params, *args, **kwargs):
    """Jitted apply, compiled once per (model, static kwargs) and reused across tests."""
    rngs = kwargs.pop("rngs", None)
    key = (repr(model), tuple(sorted(kwargs.items())))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda p, r, *a: model.apply({"params": p}, *a, rngs=r, **kwargs))
    return _JITTED[key](params, rngs, *args)


MODEL = vit.AudioViT(**TINY)
FEATS = _features(t=72)  # 72 frames: padded to 80 = 5 time patches x 2 mel patches
VALID = jnp.asarray(np.arange(72)[None] < np.array([[72], [40]]))  # clip 1: time patches 3, 4 padding


@pytest.fixture(scope="module")
def params():
    return _init(MODEL, FEATS, VALID)


# ---------------------------------------------------------------- numpy reference (EAT's torch code)


def mae_sincos_2d(dim, grid_h, grid_w):
    """MAE's get_2d_sincos_pos_embed_flexible, transcribed."""

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def np_ln(x, p=None, eps=1e-6):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y if p is None else y * p["scale"] + p["bias"]


def np_attention(x, p, heads, key_valid):
    d = x.shape[-1]
    qkv = np.einsum("bld,dthk->tblhk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"][:, None, None]
    q, k, v = qkv
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(d // heads)
    logits = np.where(key_valid[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", w, v)
    return np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_mlp(x, p):
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def np_block(x, p, heads, key_valid, pre_norm):
    """EAT AltBlock: layer_norm_first=False (post-LN) or True; returns (x, ffn target)."""
    if pre_norm:
        x = x + np_attention(np_ln(x, p["norm1"]), p["attn"], heads, key_valid)
        t = np_mlp(np_ln(x, p["norm2"]), p["mlp"])
        return x + t, t
    x = np_ln(x + np_attention(x, p["attn"], heads, key_valid), p["norm1"])
    t = np_mlp(x, p["mlp"])
    return np_ln(x + t, p["norm2"]), t


def np_vit(params, feats, valid, heads, depth, pre_norm):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    b, t, mel = feats.shape
    h, w = -(-t // P), mel // P
    x = np.pad(np.asarray(feats, np.float64), ((0, 0), (0, h * P - t), (0, 0)))
    # torch Conv2d(1, D, 16, stride 16) with weight [D, 1, 16, 16] == our kernel.T reshaped
    conv_w = p["patch_embed"]["kernel"].T.reshape(-1, P, P)
    tokens = np.einsum("bhpwq,dpq->bhwd", x.reshape(b, h, P, w, P), conv_w).reshape(b, h * w, -1)
    tokens = tokens + p["patch_embed"]["bias"] + mae_sincos_2d(tokens.shape[-1], h, w)
    vpad = np.pad(np.asarray(valid), ((0, 0), (0, h * P - t)))
    patch_valid = np.repeat(vpad.reshape(b, h, P).any(-1), w, axis=1)
    key_valid = np.concatenate([np.ones((b, 1), bool), patch_valid], 1)
    x = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, tokens.shape[-1])), tokens], 1)
    if not pre_norm:
        x = np_ln(x, p["input_norm"])
    ffns = []
    for i in range(depth):
        x, f = np_block(x, p[f"block_{i}"], heads, key_valid, pre_norm)
        ffns.append(f)
    if pre_norm:
        x = np_ln(x, p["final_norm"])
    return x, np.stack(ffns), patch_valid


# ---------------------------------------------------------------- tests


def test_sincos_matches_mae():
    np.testing.assert_allclose(posemb.sincos_2d(32, 5, 3), mae_sincos_2d(32, 5, 3), atol=1e-6)


def _check_against_reference(model, params, pre_norm):
    out = _apply(model, params, FEATS, VALID, return_layers=True)
    ref, ref_ffn, ref_valid = np_vit(params, FEATS, VALID, 2, 2, pre_norm)
    np.testing.assert_array_equal(out["valid"], ref_valid)
    assert not ref_valid[1, 3 * 2 :].any() and ref_valid[1, : 3 * 2].all()
    np.testing.assert_allclose(out["cls"], ref[:, 0], atol=2e-4)
    # padded patches' outputs are unconstrained; compare valid ones
    np.testing.assert_allclose(np.asarray(out["frames"])[ref_valid], ref[:, 1:][ref_valid], atol=2e-4)
    np.testing.assert_allclose(
        np.asarray(out["layer_ffn"])[:, :, 1:][:, ref_valid], ref_ffn[:, :, 1:][:, ref_valid], atol=2e-4
    )
    assert out["layer_out"].shape == (2, 2, 1 + 10, 32)


def test_post_norm_forward_matches_numpy_reference(params):
    _check_against_reference(MODEL, params, pre_norm=False)


def test_pre_norm_forward_matches_numpy_reference():
    model = vit.AudioViT(**TINY, pre_norm=True)
    _check_against_reference(model, _init(model, FEATS, VALID), pre_norm=True)


def test_padding_does_not_leak_into_valid_tokens(params):
    changed = FEATS.at[1, 48:].set(100.0)  # frames 40..: padding; time patches 3, 4 entirely
    a = _apply(MODEL, params, FEATS, VALID)
    b = _apply(MODEL, params, changed, VALID)
    np.testing.assert_allclose(a["cls"], b["cls"], atol=1e-5)
    np.testing.assert_allclose(a["frames"][1, :6], b["frames"][1, :6], atol=1e-5)


def test_visible_gather_is_permutation_equivariant(params):
    full = _apply(MODEL, params, FEATS, VALID)
    perms = np.stack(
        [np.stack([np.random.default_rng(10 * b + c).permutation(10) for c in range(3)]) for b in range(2)]
    )  # [B=2, C=3, K=10]: every patch visible, shuffled per clone
    out = _apply(MODEL, params, FEATS, VALID, jnp.asarray(perms))
    assert out["frames"].shape == (6, 10, 32)
    expected = np.asarray(full["frames"])[np.arange(2)[:, None, None], perms].reshape(6, 10, 32)
    np.testing.assert_allclose(out["frames"], expected, atol=1e-5)
    np.testing.assert_allclose(out["cls"], np.repeat(np.asarray(full["cls"]), 3, axis=0), atol=1e-5)
    np.testing.assert_array_equal(
        out["valid"], np.asarray(full["valid"])[np.arange(2)[:, None, None], perms].reshape(6, 10)
    )


def test_visible_subset_equals_numpy_on_those_tokens(params):
    keep = np.array([[[0, 1, 6]], [[2, 3, 9]]])  # [B=2, C=1, K=3] patch indices
    sub = _apply(MODEL, params, FEATS, VALID, jnp.asarray(keep))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    tokens = np.asarray(_embedded_tokens(params, FEATS))[np.arange(2)[:, None], keep[:, 0]]
    x = np_ln(np.concatenate([np.broadcast_to(p["cls_token"], (2, 1, 32)), tokens], 1), p["input_norm"])
    key_valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)  # clip 1, patch 9 = time patch 4: padding
    for i in range(2):
        x, _ = np_block(x, p[f"block_{i}"], 2, key_valid, False)
    np.testing.assert_allclose(sub["cls"], x[:, 0], atol=2e-4)
    np.testing.assert_allclose(np.asarray(sub["frames"])[key_valid[:, 1:]], x[:, 1:][key_valid[:, 1:]], atol=2e-4)


def _embedded_tokens(params, feats):
    """Patch embeddings + positions (the tokens before gathering)."""
    h, w = MODEL.grid(*feats.shape[1:])
    tokens = vit.patchify(feats, P) @ params["patch_embed"]["kernel"] + params["patch_embed"]["bias"]
    return tokens + posemb.sincos_2d(MODEL.dim, h, w)[None]


def test_patchify_equals_strided_conv():
    feats = _features(b=2, t=48, mel=32)
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(P * P, 8)), jnp.float32)
    ours = vit.patchify(feats, P) @ kernel
    conv = jax.lax.conv_general_dilated(
        feats[..., None], kernel.reshape(P, P, 1, 8), (P, P), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(ours, conv.reshape(2, -1, 8), atol=1e-4)


def test_patch_validity_and_grid_errors():
    valid = jnp.asarray(np.arange(40)[None] < np.array([[40], [17], [0]]))
    pv = vit.patch_validity(valid, P, 2)
    np.testing.assert_array_equal(pv, [[1] * 6, [1, 1, 1, 1, 0, 0], [0] * 6])  # 17 frames -> 2 time patches
    with pytest.raises(ValueError, match="mel bins"):
        vit.patch_grid(64, 40, P)


def test_scan_matches_loop(params):
    stacked = dict(params)
    blocks = [stacked.pop(f"block_{i}") for i in range(2)]
    stacked["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    scan_model = vit.AudioViT(**TINY, scan=True)
    abstract = jax.eval_shape(scan_model.init, jax.random.key(0), FEATS, VALID)["params"]
    assert jax.tree.map(lambda a: a.shape, nn.unbox(abstract)) == jax.tree.map(lambda a: a.shape, stacked)
    spec = nn.get_partition_spec(abstract)["blocks"]["mlp"]["fc1"]["kernel"]
    assert spec == jax.sharding.PartitionSpec("layers", "embed", "mlp")
    a = _apply(MODEL, params, FEATS, VALID, return_layers=True)
    b = _apply(scan_model, stacked, FEATS, VALID, return_layers=True)
    for k in ("cls", "frames", "layer_ffn", "layer_out"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def test_remat_gives_the_same_gradients():
    one_block = {**TINY, "depth": 1}
    model, remat_model = vit.AudioViT(**one_block), vit.AudioViT(**one_block, remat=True)
    params = _init(model, FEATS, VALID)
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, FEATS, VALID)["frames"] ** 2)  # noqa: E731
    g1, g2 = jax.jit(jax.grad(loss(model)))(params), jax.jit(jax.grad(loss(remat_model)))(params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), g1, g2)


def test_drop_path_only_in_training(params):
    x = jnp.ones((1000, 3, 4))
    y = np.asarray(vit._drop_path(x, 0.25, jax.random.key(0)))
    kept = y[:, 0, 0] > 0
    expected = np.broadcast_to(np.where(kept, 1 / 0.75, 0.0)[:, None, None], y.shape)  # whole examples
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.05
    model = vit.AudioViT(**TINY, drop_path=0.5)
    det = _apply(model, params, FEATS, VALID)
    np.testing.assert_allclose(det["cls"], _apply(MODEL, params, FEATS, VALID)["cls"], atol=1e-5)
    tr = [_apply(model, params, FEATS, VALID, train=True, rngs={"dropout": jax.random.key(k)})["cls"] for k in (3, 4)]
    assert np.abs(np.asarray(tr[0]) - np.asarray(det["cls"])).max() > 1e-3
    assert np.abs(np.asarray(tr[0]) - np.asarray(tr[1])).max() > 1e-3


def test_dtypes_and_logical_axes():
    model = vit.AudioViT(**TINY, dtype=jnp.bfloat16)
    boxed = jax.eval_shape(model.init, jax.random.key(0), FEATS, VALID)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert all(n is None or n in LOGICAL_AXES for n in leaf.names), leaf.names
        nn.logical_to_mesh_axes(leaf.names, DEFAULT_RULES)  # each name at most once per array
        assert leaf.value.dtype == jnp.float32
    out = jax.eval_shape(lambda p: model.apply({"params": p}, FEATS, VALID), nn.unbox(boxed))
    assert out["frames"].dtype == jnp.bfloat16


def test_student_flops_scale_with_visible_fraction():
    """Encoding 20% of the patches (x clones) costs ~20% of the full encoder per clone, not 100%."""
    feats = _features(b=1, t=320, mel=32)  # 20 x 2 = 40 patches
    model = vit.AudioViT(dim=64, depth=2, num_heads=2)  # Python loop: XLA counts every layer
    params = jax.eval_shape(model.init, jax.random.key(0), feats)["params"]

    def flops(visible):
        fn = jax.jit(lambda p: model.apply({"params": p}, feats, None, visible)["frames"].sum())
        return fn.lower(nn.unbox(params)).compile().cost_analysis()["flops"]

    full = flops(None)
    visible = jnp.tile(jnp.arange(0, 40, 5)[None, None], (1, 4, 1))  # 4 clones x 8 visible (20%)
    per_clone = flops(visible) / 4
    # tokens: 1 + 8 vs 1 + 40; the shared patch embedding of 40 patches is a small extra
    assert 0.15 < per_clone / full < 0.3, (per_clone, full)
