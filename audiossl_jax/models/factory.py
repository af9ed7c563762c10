"""The encoders by name, with one interface, built one way from `config.model`.

Every encoder is a flax module called as

    out = encoder.apply(variables, features, valid, *, train=False)  # rngs={"dropout": ...} to train

with features [B, T, mel], valid [B, T] bool (True = real frame; None = all real), and returns

    frames [B, T', D]  output tokens in time order
    valid  [B, T']     which of them cover real input
    clip   [B, D]      one vector per clip
    + extras

* `conformer` (`conformer.Conformer`): frames = stacked frames (T' = T / stack); clip = mean of the
  valid frames; extras `latent`, `stacked`, `latent_penalty` and the third argument `span_mask`
  (wav2vec 2.0).
* `vit` (`vit.AudioViT`): frames = patch tokens, time-major (T' = T / 16 x mel / 16); clip = the CLS
  output, also returned as `cls`; extras `layer_ffn` / `layer_out` (`return_layers=True`) and the
  third argument `visible` (EAT's student encodes the visible patches only).
* `cnn` (`cnn_encoder.CNNEncoder`): T' = T / 8; clip = max + mean of the valid frames (BYOL-A's
  pooling); BatchNorm statistics in the `batch_stats` collection (`mutable` in train mode).

Padding: the Conformer and the CNN zero padded input frames; the ViT feeds a patch that straddles
the end of a clip as it is (EAT's code does; the data pipeline pads with zeros).

`build_encoder(config.model, dtype, default=...)` builds the encoder `config.model.encoder` (else
the method's `default`) from its settings: the sub-config `config.model.<name>` when there is one
(its every key must be a field of the module), else `config.model` itself (which then also holds
the method's own settings: only the module's fields are read). A `size` entry fills the size
fields from the module's named sizes first (`conformer.SIZES`); fields not set keep the module's
defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from audiossl_jax.models import cnn_encoder, conformer, vit

ENCODERS: dict[str, type[nn.Module]] = {
    "cnn": cnn_encoder.CNNEncoder,
    "conformer": conformer.Conformer,
    "vit": vit.AudioViT,
}
SIZES: dict[str, dict[str, dict]] = {"conformer": conformer.SIZES}
_NOT_SETTINGS = ("parent", "name", "dtype", "param_dtype", "matmul_dtype")


def encoder_name(model_config, default: str | None = None, choices: tuple[str, ...] | None = None) -> str:
    """`config.model.encoder` (or `default` when the config has none), checked against `choices`
    (the encoders a method can train; default all)."""
    name = model_config.get("encoder", None) or default
    choices = tuple(choices or sorted(ENCODERS))
    if name not in choices:
        raise ValueError(f"config.model.encoder={name!r} is not one of {choices}")
    return name


def _fields(cls: type[nn.Module]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_SETTINGS}


def encoder_settings(model_config, name: str) -> dict[str, Any]:
    """The keyword arguments of encoder `name` that `config.model` sets (see the module docstring)."""
    fields = _fields(ENCODERS[name])
    section = model_config.get(name, None)
    where = f"config.model.{name}"
    if section is None or not hasattr(section, "items"):
        section, where = model_config, "config.model"
        settings = {k: v for k, v in section.items() if k in fields}
        size = section.get(f"{name}_size", None)  # SLICER configs saved before config.model.<name>
    else:
        unknown = sorted(set(section) - set(fields) - {"size"})
        if unknown:
            raise ValueError(
                f"{where}.{unknown[0]} is not a setting of {ENCODERS[name].__name__}; "
                f"settings: size, {', '.join(sorted(fields))}"
            )
        settings = {k: v for k, v in section.items() if k != "size"}
        size = section.get("size", None)
    if size is not None:
        sizes = SIZES.get(name, {})
        if size not in sizes:
            raise ValueError(f"{where}.size={size!r} is not one of {tuple(sizes)}")
        settings = {**sizes[size], **settings}
    missing = [
        k
        for k, f in fields.items()
        if k not in settings and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(
            f"{where} does not set {', '.join(missing)} for the {name} encoder"
            + (f" (or set size: one of {tuple(SIZES[name])})" if name in SIZES else "")
        )
    return settings


def build_encoder(
    model_config,
    dtype: Any,
    *,
    default: str | None = None,
    choices: tuple[str, ...] | None = None,
    matmul_dtype: Any = None,
) -> nn.Module:
    """The encoder named by `config.model.encoder` (else `default`), built from `config.model` with
    compute dtype `dtype` and matmul operand dtype `matmul_dtype` (None: `dtype`; bfloat16:
    `models/mixed_matmul.py`) (see the module docstring)."""
    name = encoder_name(model_config, default, choices)
    return ENCODERS[name](**encoder_settings(model_config, name), dtype=dtype, matmul_dtype=matmul_dtype)
