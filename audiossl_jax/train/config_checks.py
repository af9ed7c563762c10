"""Config checks run by `pretrain` before any directory is created or anything is compiled.

Each error names the field. The method checks catch crops too short for the objective's masking,
which otherwise train silently on a degenerate objective (wav2vec 2.0 with every frame masked).
"""

from __future__ import annotations

ON_NONFINITE = ("stop", "skip")


def _get(config, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return default
        node = node[part]
    return node


def validate_config(config) -> None:
    """Raises ValueError naming the field of the first bad value."""
    for field in ("train.steps", "train.ckpt_every", "train.log_every", "data.batch_size", "data.crop_frames"):
        value = _get(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config.{field}={value!r} must be a positive integer")
    keep = _get(config, "train.keep_ckpts")
    if keep is not None and (not isinstance(keep, int) or keep <= 0):
        raise ValueError(f"config.train.keep_ckpts={keep!r} must be a positive integer")
    every = _get(config, "eval.every", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ValueError(f"config.eval.every={every!r} must be an integer >= 0 (0: no evaluation)")
    for field, low in (("train.profile_start", 0), ("train.profile_steps", 1)):
        value = _get(config, field, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"config.{field}={value!r} must be an integer >= {low}")
    mode = _get(config, "train.on_nonfinite", "stop")
    if mode not in ON_NONFINITE:
        raise ValueError(f"config.train.on_nonfinite={mode!r} is not one of {ON_NONFINITE}")
    check = _METHOD_CHECKS.get(config.method)
    if check is not None:
        check(config)


def _check_wav2vec2(config) -> None:
    stack = int(_get(config, "model.stack", 1) or 1)
    span = int(_get(config, "objective.mask_span", 1) or 1)
    frames = config.data.crop_frames // stack
    if frames <= span:
        raise ValueError(
            f"config.data.crop_frames={config.data.crop_frames} gives {frames} encoder frames "
            f"(config.model.stack={stack}), not more than config.objective.mask_span={span}: every frame "
            f"would be masked; use config.data.crop_frames > {(span + 1) * stack - 1}"
        )


def _check_eat(config) -> None:
    patch = _get(config, "model.patch_size")
    if patch and config.data.crop_frames < patch:
        raise ValueError(
            f"config.data.crop_frames={config.data.crop_frames} is shorter than one patch "
            f"(config.model.patch_size={patch}): no patch to mask or predict"
        )


def _check_slicer(config) -> None:
    # BYOL-A's CNN halves time in each of its `model.blocks` max-pool blocks; fewer frames leave none.
    if _get(config, "model.encoder", "cnn") != "cnn":
        return
    blocks = int(_get(config, "model.blocks", 3) or 0)
    if config.data.crop_frames < 2**blocks:
        raise ValueError(
            f"config.data.crop_frames={config.data.crop_frames} is shorter than the CNN's "
            f"time downsampling (config.model.blocks={blocks} max-pools: {2**blocks} frames): "
            "no frame left after pooling"
        )


_METHOD_CHECKS = {"wav2vec2": _check_wav2vec2, "eat": _check_eat, "slicer": _check_slicer}


def check_frontend(config, manifest: dict, data_dir: str, what: str = "config.data.train_dir") -> None:
    """Raises ValueError when the prepared split `data_dir` (its manifest) was made with another front
    end than the one the method's config declares in `config.data.frontend`: its name and every
    option the config sets. A config that declares none (`config.data.frontend` empty) is not checked.
    The declaration is read as `audiossl prep --config` reads it (`frontends.frontend_from_config`:
    an unknown front end or option is an error naming it)."""
    from audiossl_jax.features import frontends

    declared = dict(_get(config, "data.frontend") or {})
    if not declared:
        return
    resolved = frontends.frontend_from_config(declared).params
    prepared = dict(manifest.get("frontend") or {})
    if not prepared:
        raise ValueError(f"{what} {data_dir}: its manifest.json records no front end; re-run `audiossl prep`")
    for field in declared:
        value = resolved[field]
        if prepared.get(field) != value:
            shown = ", ".join(f"{k}={prepared.get(k)!r}" for k in declared)
            raise ValueError(
                f"{what} {data_dir} was prepared with {shown}, but config.data.frontend.{field}={value!r} "
                f"(the method's front end): prepare it again with `audiossl prep --config <this config>`, "
                f"or set --config.data.frontend.{field} to what the data holds"
            )
