"""Our encoders' params <-> PyTorch state dicts (numpy arrays both ways; no torch needed).

Conformer (`models/conformer.py`) <-> torchaudio's `torchaudio.models.Conformer` names and layouts:

    input_projection.{weight,bias}       Linear [d, stack * mel]     (ours: input_projection, kernel.T)
    latent_norm.{weight,bias}            LayerNorm                   (ours: latent_norm scale/bias)
    mask_emb                             [d]
    conformer.conformer_layers.N.*       torchaudio ConformerLayer N (ours: layers/block_N)

with, in each layer, `ffn{1,2}.sequential.{0,1,4}` (LayerNorm, up, down), `self_attn_layer_norm`,
`self_attn.in_proj_{weight,bias}` ([3d, d]: qkv/kernel [d, 3, heads, head_dim] flattened and
transposed), `self_attn.out_proj`, `conv_module.layer_norm`, `conv_module.sequential.{0,2,3,5}`
(pointwise Conv1d [2d, d, 1], depthwise [d, 1, K], conv norm, pointwise [d, d, 1]) and
`final_layer_norm`. `conformer.*` is exactly a `torchaudio.models.Conformer` state dict when the
conv norm is "group" (torchaudio's `use_group_norm=True`) and every block has the same kernel; our
"layer" conv norm (LayerNorm over channels per frame) keeps the same names and shapes, and rotary
positions have no parameters (`interop/torch_reference.py` builds both in torch).

Audio ViT (`models/vit.py`) <-> EAT's released fairseq checkpoints (github.com/cwx-worst-one/EAT,
`models/EAT_pretraining.py`, `images.py`, `modules.py`: `Data2VecMultiModel` with an `ImageEncoder`):

    modality_encoders.IMAGE.local_encoder.proj.{weight,bias}  Conv2d [D, 1, p, p] (patch_embed)
    modality_encoders.IMAGE.extra_tokens                      [1, 1, D] (cls_token)
    modality_encoders.IMAGE.context_encoder.norm.{weight,bias}  input LayerNorm (post-LN model)
    norm.{weight,bias}                                        final LayerNorm (pre-LN model)
    blocks.N.{norm1,norm2}.{weight,bias}, blocks.N.attn.qkv.{weight,bias} [3D, D],
    blocks.N.attn.proj.{weight,bias}, blocks.N.mlp.{fc1,fc2}.{weight,bias}

EAT's `fixed_positional_encoder.positions` buffer is the sin-cos table our ViT computes; on import
it is checked against ours (`posemb.sincos_2d`) and dropped. Pre-training-only entries of an EAT
checkpoint (`_ema`, the decoder, `recon_proj`, `cls_proj`) are ignored; a fine-tuned checkpoint's
`model.` prefix is stripped. EAT's Hugging Face port (`worstchan/EAT-*`, `trust_remote_code`: an
`EATModel` whose `model` is an `EAT` with `local_encoder`, `extra_tokens`, `fixed_positional_encoder`,
`pre_norm` (the input LayerNorm), `blocks`, and for fine-tuned models `fc_norm` and `head`) is
renamed to the fairseq names first (`HUB_NAMES`).

BYOL-A CNN (`models/cnn_encoder.py`, SLICER's encoder) <-> BYOL-A's `AudioNTT2020`
(github.com/nttcslab/byol-a, `byol_a/models.py`), input [B, 1, mel, time]:

    features.{4i}.{weight,bias}           Conv2d [C, C_in, 3 (mel), 3 (time)]  (ours: block{i}/conv,
                                          kernel [3 (time), 3 (mel), C_in, C] transposed (3, 2, 1, 0))
    features.{4i+1}.{weight,bias,running_mean,running_var,num_batches_tracked}  BatchNorm2d
                                          (ours: block{i}/bn scale/bias, batch_stats mean/var)
    fc.0.{weight,bias}, fc.3.{weight,bias}  Linear (ours: fc1, fc2; kernel.T)

Both flatten each frame mel-outer, channel-inner, so `fc.0` needs no reordering.

Scanned stacks (`scan=True`) are unstacked on export and restacked on import (`scan=` argument).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from audiossl_jax.models import posemb

Params = dict[str, Any]
EAT = "modality_encoders.IMAGE."


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _take(state: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in state:
        raise KeyError(f"state dict has no {name!r} (it has e.g. {sorted(state)[:5]})")
    return _f32(state[name])


def _norm_to(p: Params, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": _f32(p["scale"]), f"{prefix}.bias": _f32(p["bias"])}


def _norm_from(state, prefix: str) -> Params:
    return {"scale": _take(state, f"{prefix}.weight"), "bias": _take(state, f"{prefix}.bias")}


def _dense_to(p: Params, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": _f32(p["kernel"]).T.copy(), f"{prefix}.bias": _f32(p["bias"])}


def _dense_from(state, prefix: str) -> Params:
    w = _take(state, f"{prefix}.weight")
    if w.ndim == 3:  # pointwise Conv1d [out, in, 1]
        w = w[:, :, 0]
    return {"kernel": w.T.copy(), "bias": _take(state, f"{prefix}.bias")}


def _attention_to(p: Params, qkv: str, out: str, fused_names: bool) -> dict[str, np.ndarray]:
    kernel = _f32(p["qkv"]["kernel"])  # [d, 3, heads, head_dim]
    d = kernel.shape[0]
    w_qkv, b_qkv = kernel.reshape(d, -1).T.copy(), _f32(p["qkv"]["bias"]).reshape(-1)
    names = (f"{qkv}_weight", f"{qkv}_bias") if fused_names else (f"{qkv}.weight", f"{qkv}.bias")
    return {
        names[0]: w_qkv,
        names[1]: b_qkv,
        f"{out}.weight": _f32(p["out"]["kernel"]).reshape(-1, d).T.copy(),
        f"{out}.bias": _f32(p["out"]["bias"]),
    }


def _attention_from(state, qkv: str, out: str, fused_names: bool, num_heads: int) -> Params:
    names = (f"{qkv}_weight", f"{qkv}_bias") if fused_names else (f"{qkv}.weight", f"{qkv}.bias")
    w = _take(state, names[0])  # [3d, d]
    d = w.shape[1]
    if d % num_heads:
        raise ValueError(f"width {d} is not divisible by num_heads={num_heads}")
    hd = d // num_heads
    return {
        "qkv": {
            "kernel": w.T.reshape(d, 3, num_heads, hd).copy(),
            "bias": _take(state, names[1]).reshape(3, num_heads, hd),
        },
        "out": {
            "kernel": _take(state, f"{out}.weight").T.reshape(num_heads, hd, d).copy(),
            "bias": _take(state, f"{out}.bias"),
        },
    }


def _map(fn, *trees):
    """fn over the leaves of nested dicts of the same structure (numpy only: no jax needed)."""
    if isinstance(trees[0], dict):
        return {k: _map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def _unstack(tree: Params) -> list[Params]:
    """A scanned stack (leading layer axis on every leaf) -> one tree per layer."""
    first = tree
    while isinstance(first, dict):
        first = next(iter(first.values()))
    return [_map(lambda a, i=i: np.asarray(a)[i], tree) for i in range(first.shape[0])]


def _stack(trees: list[Params]) -> Params:
    return _map(lambda *a: np.stack(a), *trees)


def _indices(state, pattern: str) -> list[int]:
    found = sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})
    if found != list(range(len(found))):
        raise ValueError(f"layer indices of {pattern!r} are not 0..N-1: {found}")
    return found


# ----------------------------------------------------------------------------- Conformer
def _conformer_block_to(p: Params, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for ffn in ("ffn1", "ffn2"):
        out |= _norm_to(p[ffn]["norm"], f"{prefix}.{ffn}.sequential.0")
        out |= _dense_to(p[ffn]["up"], f"{prefix}.{ffn}.sequential.1")
        out |= _dense_to(p[ffn]["down"], f"{prefix}.{ffn}.sequential.4")
    out |= _norm_to(p["attention_norm"], f"{prefix}.self_attn_layer_norm")
    out |= _attention_to(p["attention"], f"{prefix}.self_attn.in_proj", f"{prefix}.self_attn.out_proj", True)
    conv, cp = p["conv"], f"{prefix}.conv_module"
    out |= _norm_to(conv["norm"], f"{cp}.layer_norm")
    for name, idx in (("pointwise_in", 0), ("pointwise_out", 5)):
        w = _dense_to(conv[name], f"{cp}.sequential.{idx}")
        w[f"{cp}.sequential.{idx}.weight"] = w[f"{cp}.sequential.{idx}.weight"][:, :, None]
        out |= w
    out[f"{cp}.sequential.2.weight"] = _f32(conv["depthwise"]["kernel"]).T[:, None, :].copy()
    out[f"{cp}.sequential.2.bias"] = _f32(conv["depthwise"]["bias"])
    out |= _norm_to(conv["conv_norm"], f"{cp}.sequential.3")
    out |= _norm_to(p["final_norm"], f"{prefix}.final_layer_norm")
    return out


def _conformer_block_from(state, prefix: str, num_heads: int) -> Params:
    cp = f"{prefix}.conv_module"
    if f"{cp}.sequential.3.running_mean" in state:
        raise ValueError(
            f"{cp}.sequential.3 is a BatchNorm (torchaudio's default use_group_norm=False): not supported, "
            "our conv norms are 'group' (use_group_norm=True) and 'layer'"
        )
    block = {
        ffn: {
            "norm": _norm_from(state, f"{prefix}.{ffn}.sequential.0"),
            "up": _dense_from(state, f"{prefix}.{ffn}.sequential.1"),
            "down": _dense_from(state, f"{prefix}.{ffn}.sequential.4"),
        }
        for ffn in ("ffn1", "ffn2")
    }
    block["attention_norm"] = _norm_from(state, f"{prefix}.self_attn_layer_norm")
    block["attention"] = _attention_from(
        state, f"{prefix}.self_attn.in_proj", f"{prefix}.self_attn.out_proj", True, num_heads
    )
    block["conv"] = {
        "norm": _norm_from(state, f"{cp}.layer_norm"),
        "pointwise_in": _dense_from(state, f"{cp}.sequential.0"),
        "depthwise": {
            "kernel": _take(state, f"{cp}.sequential.2.weight")[:, 0, :].T.copy(),
            "bias": _take(state, f"{cp}.sequential.2.bias"),
        },
        "conv_norm": _norm_from(state, f"{cp}.sequential.3"),
        "pointwise_out": _dense_from(state, f"{cp}.sequential.5"),
    }
    block["final_norm"] = _norm_from(state, f"{prefix}.final_layer_norm")
    return block


def conformer_blocks(layers: Params) -> list[Params]:
    """The per-block params of a `ConformerLayers` tree, in order (unstacking a scanned stack)."""
    blocks = [layers["block_0"]]
    if "blocks" in layers:
        return blocks + _unstack(layers["blocks"]["block"])
    return blocks + [layers[f"block_{i}"] for i in range(1, len(layers))]


def conformer_to_torch(params: Params) -> dict[str, np.ndarray]:
    """`Conformer` params -> state dict in torchaudio layout (see the module docstring)."""
    out = _dense_to(params["input_projection"], "input_projection")
    out |= _norm_to(params["latent_norm"], "latent_norm")
    out["mask_emb"] = _f32(params["mask_emb"])
    for i, block in enumerate(conformer_blocks(params["layers"])):
        out |= _conformer_block_to(block, f"conformer.conformer_layers.{i}")
    return out


def conformer_layers_from_torch(
    state: dict[str, np.ndarray], num_heads: int, *, prefix: str = "", scan: bool = False
) -> Params:
    """A `torchaudio.models.Conformer` state dict (keys `{prefix}conformer_layers.N.*`) -> our
    `ConformerLayers` params (`Conformer`'s `layers`); `scan`: stack blocks 1..N-1 as `scan=True` does."""
    pattern = re.escape(prefix) + r"conformer_layers\.(\d+)\."
    blocks = [
        _conformer_block_from(state, f"{prefix}conformer_layers.{i}", num_heads) for i in _indices(state, pattern)
    ]
    if not blocks:
        raise KeyError(f"no {prefix}conformer_layers.N.* entries in the state dict")
    if scan:
        return {"block_0": blocks[0], **({"blocks": {"block": _stack(blocks[1:])}} if len(blocks) > 1 else {})}
    return {f"block_{i}": b for i, b in enumerate(blocks)}


def conformer_from_torch(state: dict[str, np.ndarray], num_heads: int, *, scan: bool = False) -> Params:
    """State dict of `conformer_to_torch`'s layout -> our `Conformer` params."""
    return {
        "input_projection": _dense_from(state, "input_projection"),
        "latent_norm": _norm_from(state, "latent_norm"),
        "mask_emb": _take(state, "mask_emb"),
        "layers": conformer_layers_from_torch(state, num_heads, prefix="conformer.", scan=scan),
    }


# ----------------------------------------------------------------------------- ViT (EAT)
def _vit_block_to(p: Params, prefix: str) -> dict[str, np.ndarray]:
    out = _norm_to(p["norm1"], f"{prefix}.norm1") | _norm_to(p["norm2"], f"{prefix}.norm2")
    out |= _attention_to(p["attn"], f"{prefix}.attn.qkv", f"{prefix}.attn.proj", False)
    out |= _dense_to(p["mlp"]["fc1"], f"{prefix}.mlp.fc1") | _dense_to(p["mlp"]["fc2"], f"{prefix}.mlp.fc2")
    return out


def _vit_block_from(state, prefix: str, num_heads: int) -> Params:
    return {
        "norm1": _norm_from(state, f"{prefix}.norm1"),
        "norm2": _norm_from(state, f"{prefix}.norm2"),
        "attn": _attention_from(state, f"{prefix}.attn.qkv", f"{prefix}.attn.proj", False, num_heads),
        "mlp": {"fc1": _dense_from(state, f"{prefix}.mlp.fc1"), "fc2": _dense_from(state, f"{prefix}.mlp.fc2")},
    }


def vit_to_torch(params: Params) -> dict[str, np.ndarray]:
    """`AudioViT` params -> state dict in EAT's names and layouts (see the module docstring)."""
    kernel = _f32(params["patch_embed"]["kernel"])  # [p * p, D]
    p = int(round(kernel.shape[0] ** 0.5))
    out = {
        f"{EAT}local_encoder.proj.weight": kernel.T.reshape(-1, 1, p, p).copy(),
        f"{EAT}local_encoder.proj.bias": _f32(params["patch_embed"]["bias"]),
        f"{EAT}extra_tokens": _f32(params["cls_token"]),
    }
    if "input_norm" in params:
        out |= _norm_to(params["input_norm"], f"{EAT}context_encoder.norm")
    if "final_norm" in params:
        out |= _norm_to(params["final_norm"], "norm")
    blocks = _unstack(params["blocks"]) if "blocks" in params else [params[f"block_{i}"] for i in range(_depth(params))]
    for i, block in enumerate(blocks):
        out |= _vit_block_to(block, f"blocks.{i}")
    return out


def _depth(params: Params) -> int:
    return sum(1 for k in params if k.startswith("block_"))


# EAT's Hugging Face port (huggingface.co/worstchan/EAT-base_epoch30_pretrain and its siblings:
# `EATModel` holding `model = EAT(config)`, eat_model.py) -> the fairseq names above
HUB_NAMES = {
    "local_encoder.": f"{EAT}local_encoder.",
    "extra_tokens": f"{EAT}extra_tokens",
    "fixed_positional_encoder.": f"{EAT}fixed_positional_encoder.",
    "pre_norm.": f"{EAT}context_encoder.norm.",
}


def _to_fairseq_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a fine-tuned EAT checkpoint's (or the Hugging Face port's) `model.` prefix (a classifier
    head is then ignored) and renames the Hugging Face port's entries to EAT's fairseq names."""
    if "blocks.0.attn.qkv.weight" not in state and "model.blocks.0.attn.qkv.weight" in state:
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if "local_encoder.proj.weight" in state:  # the Hugging Face port

        def rename(key):
            for theirs, ours in HUB_NAMES.items():
                if key.startswith(theirs):
                    return ours + key[len(theirs) :]
            return key

        state = {rename(k): v for k, v in state.items()}
    return state


def vit_from_eat(
    state: dict[str, np.ndarray], num_heads: int, *, mel_bins: int | None = None, scan: bool = False
) -> Params:
    """An EAT checkpoint's state dict (`torch.load(path)["model"]`, or `vit_to_torch`'s output) ->
    our `AudioViT` params. `mel_bins` (EAT: 128) lets the `positions` buffer, when present, be checked
    against our sin-cos table; `scan`: stack the blocks as `AudioViT(scan=True)` does."""
    state = _to_fairseq_names(state)
    proj = _take(state, f"{EAT}local_encoder.proj.weight")  # [D, 1, p, p]
    dim, channels, p, p2 = proj.shape
    if channels != 1 or p != p2:
        raise ValueError(f"expected a one-channel square patch conv, got {proj.shape}")
    params = {
        "patch_embed": {
            "kernel": proj.reshape(dim, p * p).T.copy(),
            "bias": _take(state, f"{EAT}local_encoder.proj.bias"),
        },
        "cls_token": _take(state, f"{EAT}extra_tokens").reshape(1, 1, dim),
    }
    if f"{EAT}context_encoder.norm.weight" in state:
        params["input_norm"] = _norm_from(state, f"{EAT}context_encoder.norm")
    if "norm.weight" in state:
        params["final_norm"] = _norm_from(state, "norm")
    if f"{EAT}context_encoder.blocks.0.attn.qkv.weight" in state:
        raise ValueError("EAT checkpoints with prenet blocks (prenet_depth > 0) are not supported")
    if f"{EAT}alibi_scale" in state or f"{EAT}alibi_bias" in state:
        raise ValueError("EAT checkpoints with ALiBi attention biases (use_alibi_encoder) are not supported")
    positions = state.get(f"{EAT}fixed_positional_encoder.positions")
    if positions is not None and mel_bins is not None:
        positions = _f32(positions).reshape(-1, dim)
        cols = mel_bins // p
        ours = posemb.sincos_2d(dim, -(-positions.shape[0] // cols), cols)
        if ours.shape != positions.shape or not np.allclose(positions, ours, atol=1e-5):
            raise ValueError(
                "the checkpoint's fixed positions differ from our sin-cos table "
                f"({positions.shape[0]} positions vs {cols} mel patches per row): wrong mel_bins or another "
                "position scheme"
            )
    blocks = [_vit_block_from(state, f"blocks.{i}", num_heads) for i in _indices(state, r"blocks\.(\d+)\.")]
    if not blocks:
        raise KeyError("no blocks.N.* entries in the state dict")
    if scan:
        params["blocks"] = _stack(blocks)
    else:
        params |= {f"block_{i}": b for i, b in enumerate(blocks)}
    return params


# ----------------------------------------------------------------------------- BYOL-A CNN
def cnn_to_torch(variables: Params) -> dict[str, np.ndarray]:
    """`CNNEncoder` variables ({"params", "batch_stats"}) -> BYOL-A `AudioNTT2020` state dict."""
    params, stats = variables["params"], variables.get("batch_stats") or {}
    blocks = sorted(int(k[len("block") :]) for k in params if re.fullmatch(r"block\d+", k))
    out = {}
    for i in blocks:
        conv, bn = params[f"block{i}"]["conv"], params[f"block{i}"]["bn"]
        if f"block{i}" not in stats:
            raise ValueError(f"block{i}: no BatchNorm running statistics (batch_stats) to export")
        running = stats[f"block{i}"]["bn"]
        out[f"features.{4 * i}.weight"] = _f32(conv["kernel"]).transpose(3, 2, 1, 0).copy()
        out[f"features.{4 * i}.bias"] = _f32(conv["bias"])
        out[f"features.{4 * i + 1}.weight"] = _f32(bn["scale"])
        out[f"features.{4 * i + 1}.bias"] = _f32(bn["bias"])
        out[f"features.{4 * i + 1}.running_mean"] = _f32(running["mean"])
        out[f"features.{4 * i + 1}.running_var"] = _f32(running["var"])
        out[f"features.{4 * i + 1}.num_batches_tracked"] = np.array(0, np.int64)
    for ours, theirs in (("fc1", "fc.0"), ("fc2", "fc.3")):
        out[f"{theirs}.weight"] = _f32(params[ours]["kernel"]).T.copy()
        out[f"{theirs}.bias"] = _f32(params[ours]["bias"])
    return out


def cnn_from_torch(state: dict[str, np.ndarray]) -> Params:
    """A BYOL-A `AudioNTT2020` state dict (or `cnn_to_torch`'s output) -> `CNNEncoder` variables
    {"params", "batch_stats"}."""
    layers = {int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))}
    convs = sorted(i // 4 for i in layers if i % 4 == 0)
    if convs != list(range(len(convs))) or layers != {j for i in convs for j in (4 * i, 4 * i + 1)}:
        raise ValueError(f"features.N layers {sorted(layers)} are not BYOL-A's conv/BatchNorm pairs at 4i, 4i+1")
    if not convs:
        raise KeyError("no features.<4i>.weight entries (BYOL-A AudioNTT2020 convolutions) in the state dict")
    params, stats = {}, {}
    for i in convs:
        conv, bn = f"features.{4 * i}", f"features.{4 * i + 1}"
        params[f"block{i}"] = {
            "conv": {
                "kernel": _take(state, f"{conv}.weight").transpose(3, 2, 1, 0).copy(),
                "bias": _take(state, f"{conv}.bias"),
            },
            "bn": {"scale": _take(state, f"{bn}.weight"), "bias": _take(state, f"{bn}.bias")},
        }
        stats[f"block{i}"] = {
            "bn": {"mean": _take(state, f"{bn}.running_mean"), "var": _take(state, f"{bn}.running_var")}
        }
    for ours, theirs in (("fc1", "fc.0"), ("fc2", "fc.3")):
        params[ours] = {"kernel": _take(state, f"{theirs}.weight").T.copy(), "bias": _take(state, f"{theirs}.bias")}
    return {"params": params, "batch_stats": stats}
