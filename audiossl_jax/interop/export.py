"""Export a pre-trained encoder to safetensors in PyTorch names and layouts, and read state dicts back.

    audiossl export --workdir W --out model.safetensors

writes the encoder of W's latest checkpoint (`interop/layouts.py`: the Conformer in torchaudio's
`Conformer` layout, the ViT in EAT's, SLICER's CNN in BYOL-A's `AudioNTT2020`) plus the input
normalisation (`normalization.mean` / `normalization.std` [mel]: features are
`(log_mel - mean) / std`), and a metadata entry `audiossl`
holding JSON: method, encoder name, the encoder module's settings, the front end's settings, the
checkpoint step. `interop/torch_reference.py` builds the same encoder in torch from that file.
The safetensors numpy API needs no torch; reading a `.pt` file needs torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from audiossl_jax.interop import layouts

METADATA_KEY = "audiossl"
_NOT_SETTINGS = ("parent", "name", "dtype", "param_dtype")


def encoder_module(objective):
    """The flax encoder module of an objective (EAT: `encoder`; wav2vec 2.0: `model.encoder`; SLICER:
    `net.encoder`)."""
    encoder = getattr(objective, "encoder", None)
    for holder in ("model", "net"):
        if encoder is None and hasattr(objective, holder):
            encoder = getattr(getattr(objective, holder), "encoder", None)
    if encoder is None:
        raise ValueError(f"objective {type(objective).__name__} has no encoder module to export")
    return encoder


def encoder_kind(module) -> str:
    """ "conformer" | "vit" | "cnn" for the encoders that have a PyTorch layout."""
    from audiossl_jax.models import cnn_encoder, conformer, vit

    if isinstance(module, conformer.Conformer):
        return "conformer"
    if isinstance(module, vit.AudioViT):
        return "vit"
    if isinstance(module, cnn_encoder.CNNEncoder):
        return "cnn"
    raise ValueError(f"no PyTorch layout for a {type(module).__name__} encoder (export: conformer, vit, cnn)")


def encoder_variables(objective, params, aux) -> dict:
    """The encoder module's own variables ({"params", ...}): `objective.encoder_variables`, without
    the `encoder` level SLICER's variables have (they are applied through `SlicerNet`)."""
    variables = objective.encoder_variables(params, aux)
    if set(variables["params"]) == {"encoder"}:
        variables = {k: v["encoder"] for k, v in variables.items() if "encoder" in v}
    return variables


def module_settings(module) -> dict[str, Any]:
    """The module's dataclass fields (its settings), JSON-ready."""
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in _NOT_SETTINGS}


def to_torch(kind: str, params, batch_stats=None) -> dict[str, np.ndarray]:
    """Encoder params (and, for the CNN, its BatchNorm `batch_stats`) -> a state dict in our export layout."""
    if kind == "conformer":
        return layouts.conformer_to_torch(params)
    if kind == "vit":
        return layouts.vit_to_torch(params)
    if kind == "cnn":
        return layouts.cnn_to_torch({"params": params, "batch_stats": batch_stats})
    raise ValueError(f"unknown encoder kind {kind!r}")


def from_torch(kind: str, state: dict[str, np.ndarray], settings: dict[str, Any]):
    """A state dict in our export layout -> the encoder params for `settings` (a module's fields);
    for the CNN, its variables {"params", "batch_stats"}."""
    scan = bool(settings.get("scan", False))
    if kind == "conformer":
        return layouts.conformer_from_torch(state, int(settings["num_heads"]), scan=scan)
    if kind == "vit":
        return layouts.vit_from_eat(state, int(settings["num_heads"]), scan=scan)
    if kind == "cnn":
        return layouts.cnn_from_torch(state)
    raise ValueError(f"unknown encoder kind {kind!r}")


def save(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        path,
        metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)},
    )


def load(path: str, *, trust_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict of numpy arrays, our metadata or {}) from a `.safetensors` file, or from a torch
    `.pt` / `.pth` / `.ckpt` file (needs torch; a fairseq checkpoint's `model` entry is taken).
    Torch files are read with `weights_only=True`; fairseq checkpoints (EAT's) also pickle their
    config objects and need `trust_pickle=True`, which runs the file's pickle: only for trusted files."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="np") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            raw = (f.metadata() or {}).get(METADATA_KEY)
        return state, (json.loads(raw) if raw else {})
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises pickle.UnpicklingError for objects outside its allow-list
        if trust_pickle:
            raise
        raise ValueError(
            f"{path} holds more than tensors (a fairseq checkpoint pickles its config); if you trust the "
            "file, load it with trust_pickle=True"
        ) from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v.detach().float().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, {}


def export_workdir(workdir: str, out: str, *, random_init: bool = False) -> dict[str, Any]:
    """Writes the encoder of `workdir`'s latest checkpoint to `out` (.safetensors); returns the metadata."""
    import jax

    from audiossl_jax.evaluate.encoder import FrozenEncoder

    if not out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got {out!r}")
    encoder = FrozenEncoder.load(workdir, random_init=random_init)
    module = encoder_module(encoder.objective)
    kind = encoder_kind(module)
    variables = encoder_variables(encoder.objective, encoder.params, encoder.aux)
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    tensors = to_torch(kind, variables["params"], variables.get("batch_stats"))
    tensors["normalization.mean"] = np.asarray(encoder._mean, np.float32)
    tensors["normalization.std"] = (1.0 / np.asarray(encoder._inv_std, np.float64)).astype(np.float32)
    metadata = {
        "format": 1,
        "method": str(encoder.config.method),
        "encoder": kind,
        "settings": module_settings(module),
        "frontend": encoder.frontend.params,
        "mel_bins": int(encoder.mel_bins),
        "step": int(encoder.step),
        "workdir": os.path.abspath(workdir),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save(out, tensors, metadata)
    return metadata
