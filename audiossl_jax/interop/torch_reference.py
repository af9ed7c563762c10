"""Our encoders in plain PyTorch, loading `audiossl export` files (needs torch; torchaudio for the
Conformer). The only module of the package that needs torch to import.

    from audiossl_jax.interop import torch_reference
    model = torch_reference.load("model.safetensors")      # torch.nn.Module in eval mode
    frames = model(features)                               # [B, T, mel] normalised log-mel

* `ConformerEncoder`: frame stacking + `input_projection` + `latent_norm` + a
  `torchaudio.models.Conformer` whose first layer may have its own kernel size, with our two
  options torchaudio lacks put in place of its modules (same parameter names): rotary positions in
  the attention (`RotaryMultiheadAttention`) and the "layer" conv norm (`ChannelLayerNorm`).
  Returns the frames [B, ceil(T / stack), d] of an unpadded batch.
* `EATViT`: EAT's ViT (post-LN `AltBlock`s with an input LayerNorm, or pre-LN with a final norm),
  written from EAT's code with its parameter names; returns all tokens [B, 1 + N, D], CLS first.
* `AudioNTT2020`: BYOL-A's CNN (SLICER's encoder) in BYOL-A's names; returns frames [B, T / 8, dim].

Each computes what our JAX encoder computes on unpadded input (tests/test_interop*.py, within 1e-4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- Conformer
class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of [B, C, T] per frame (our conv_norm="layer"); params weight/bias."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        y = F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.transpose(1, 2)


class RotaryMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention`'s parameters and call (time-first [T, B, d]) with rotary position
    embedding on queries and keys ("rotate half" layout, base 10000)."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @staticmethod
    def rotate(x, positions):
        head_dim = x.shape[-1]
        inv_freq = 1.0 / (10_000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1).to(x.dtype)  # [T, head_dim]
        half = head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * angles.cos()[:, None, None, :] + rotated * angles.sin()[:, None, None, :]

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, **unused):
        t, b, d = query.shape
        h = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(t, b, 3, h, d // h)
        q, k, v = qkv.unbind(dim=2)  # [T, B, H, hd]
        positions = torch.arange(t)
        q, k = self.rotate(q, positions), self.rotate(k, positions)
        logits = torch.einsum("qbhd,kbhd->bhqk", q, k) / math.sqrt(d // h)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = torch.einsum("bhqk,kbhd->qbhd", logits.softmax(dim=-1), v).reshape(t, b, d)
        return self.out_proj(out), None


class ConformerEncoder(nn.Module):
    """Our `Conformer` encoder (inference, unpadded batches) on torchaudio's Conformer."""

    def __init__(self, settings: dict[str, Any], mel_bins: int):
        super().__init__()
        from torchaudio.models import Conformer
        from torchaudio.models.conformer import ConformerLayer

        s = settings
        d, heads = int(s["d_model"]), int(s["num_heads"])
        self.stack, self.input_norm = int(s.get("stack", 4)), s.get("input_norm", "none")
        group = s.get("conv_norm", "layer") == "group"
        self.input_projection = nn.Linear(self.stack * mel_bins, d)
        self.latent_norm = nn.LayerNorm(d)
        self.mask_emb = nn.Parameter(torch.zeros(d))
        layer_kw = dict(dropout=0.0, use_group_norm=group, convolution_first=bool(s.get("conv_first", True)))
        self.conformer = Conformer(d, heads, int(s["mlp_dim"]), int(s["num_layers"]), int(s["kernel_size"]), **layer_kw)
        layers = self.conformer.conformer_layers
        layers[0] = ConformerLayer(d, int(s["mlp_dim"]), heads, int(s["first_kernel_size"]), **layer_kw)
        for layer in layers:
            if not group:
                layer.conv_module.sequential[3] = ChannelLayerNorm(d)
            if s.get("rotary", True):
                layer.self_attn = RotaryMultiheadAttention(d, heads)

    def forward(self, features):
        """features [B, T, mel] (every frame real) -> frames [B, ceil(T / stack), d]."""
        b, t, mel = features.shape
        if self.input_norm == "frame_mean":
            features = features - features.mean(dim=-1, keepdim=True)
        pad = (-t) % self.stack
        x = F.pad(features, (0, 0, 0, pad)).reshape(b, (t + pad) // self.stack, self.stack * mel)
        x = self.latent_norm(self.input_projection(x))
        lengths = torch.full((b,), x.shape[1], dtype=torch.long)
        return self.conformer(x, lengths)[0]


# ----------------------------------------------------------------------------- ViT (EAT)
def mae_sincos_2d(dim: int, rows: int, cols: int) -> np.ndarray:
    """MAE's / EAT's `get_2d_sincos_pos_embed_flexible(dim, (rows, cols))` [rows * cols, dim]."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32)))
    grid = grid.reshape(2, 1, rows, cols)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


class AltAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (c // self.num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class AltBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_dim, eps, layer_norm_first):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn, self.mlp = AltAttention(dim, num_heads), Mlp(dim, mlp_dim)

    def forward(self, x):
        if self.layer_norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class _ImageEncoder(nn.Module):
    """Holds EAT's `modality_encoders.IMAGE.*` parameters."""

    def __init__(self, dim, patch, eps, layer_norm_first):
        super().__init__()
        self.local_encoder = nn.Module()
        self.local_encoder.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.extra_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        if not layer_norm_first:
            self.context_encoder = nn.Module()
            self.context_encoder.norm = nn.LayerNorm(dim, eps=eps)


class EATViT(nn.Module):
    """EAT's encoder (`Data2VecMultiModel` with the image modality, prenet_depth 0) in its names."""

    def __init__(self, settings: dict[str, Any]):
        super().__init__()
        s = settings
        dim, self.patch = int(s.get("dim", 768)), int(s.get("patch_size", 16))
        eps, pre = float(s.get("ln_eps", 1e-6)), bool(s.get("pre_norm", False))
        mlp_dim = int(dim * float(s.get("mlp_ratio", 4.0)))
        self.dim = dim
        self.modality_encoders = nn.ModuleDict({"IMAGE": _ImageEncoder(dim, self.patch, eps, pre)})
        self.blocks = nn.ModuleList(
            AltBlock(dim, int(s.get("num_heads", 12)), mlp_dim, eps, pre) for _ in range(int(s.get("depth", 12)))
        )
        self.norm = nn.LayerNorm(dim, eps=eps) if pre else None

    def forward(self, features):
        """features [B, T, mel] (every frame real) -> tokens [B, 1 + N, D] (CLS, then time-major patches)."""
        enc = self.modality_encoders["IMAGE"]
        b, t, mel = features.shape
        x = F.pad(features, (0, 0, 0, (-t) % self.patch))[:, None]  # [B, 1, T, mel]
        x = enc.local_encoder.proj(x)  # [B, D, T / p, mel / p]
        rows, cols = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        x = x + torch.as_tensor(mae_sincos_2d(self.dim, rows, cols), dtype=x.dtype)[None]
        x = torch.cat([enc.extra_tokens.expand(b, -1, -1), x], dim=1)
        if self.norm is None:
            x = enc.context_encoder.norm(x)
        for block in self.blocks:
            x = block(x)
        return x if self.norm is None else self.norm(x)


# ----------------------------------------------------------------------------- BYOL-A CNN
class AudioNTT2020(nn.Module):
    """BYOL-A's encoder (github.com/nttcslab/byol-a, `byol_a/models.py`: `AudioNTT2020Task6`, the
    encoder of SLICER) in its names, for our `CNNEncoder` settings (blocks, channels, dim)."""

    def __init__(self, settings: dict[str, Any]):
        super().__init__()
        s = settings
        mel, channels = int(s.get("num_mel_bins", 64)), int(s.get("channels", 64))
        blocks, dim = int(s.get("blocks", 3)), int(s.get("dim", 2048))
        layers, c_in = [], 1
        for _ in range(blocks):
            layers += [nn.Conv2d(c_in, channels, 3, stride=1, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            layers.append(nn.MaxPool2d(2, stride=2))
            c_in = channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(channels * (mel // 2**blocks), dim),
            nn.ReLU(),
            nn.Dropout(p=float(s.get("dropout", 0.3))),
            nn.Linear(dim, dim),
            nn.ReLU(),
        )

    def forward(self, features):
        """features [B, T, mel] (every frame real) -> frames [B, T / 8, dim]; the clip embedding is
        `frames.max(1).values + frames.mean(1)`."""
        x = self.features(features.transpose(1, 2)[:, None])  # [B, C, mel / 8, T / 8]
        x = x.permute(0, 3, 2, 1)  # [B, T / 8, mel / 8, C]
        b, t, d, c = x.shape
        return self.fc(x.reshape(b, t, c * d))


# ----------------------------------------------------------------------------- loading
def build(metadata: dict[str, Any]) -> nn.Module:
    """The torch module an export's metadata describes (random weights)."""
    if metadata["encoder"] == "conformer":
        return ConformerEncoder(metadata["settings"], int(metadata["mel_bins"]))
    if metadata["encoder"] == "vit":
        return EATViT(metadata["settings"])
    if metadata["encoder"] == "cnn":
        return AudioNTT2020(metadata["settings"])
    raise ValueError(f"no torch reference for encoder {metadata['encoder']!r}")


def load(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The encoder of an `audiossl export` file, weights loaded (strictly), in eval mode."""
    from audiossl_jax.interop import export

    state, metadata = export.load(path)
    if not metadata:
        raise ValueError(f"{path} has no {export.METADATA_KEY!r} metadata: not written by `audiossl export`")
    model = build(metadata).to(dtype)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items() if not k.startswith("normalization.")}
    model.load_state_dict(tensors, strict=True)
    return model.eval()
