"""The built-in objectives and `build(config)`, which imports the module `config.method` names."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from audiossl_jax.objectives.protocol import Objective

OBJECTIVES = ("wav2vec2", "eat", "slicer", "finetune")


def build(config) -> Objective:
    """Builds the objective of `config.method`: a built-in name (`audiossl_jax.objectives.<method>`)
    or the dotted path of your own module that defines `build(config)`."""
    if config.method in OBJECTIVES:
        module_name = f"audiossl_jax.objectives.{config.method}"
    elif "." in config.method:
        module_name = config.method
    else:
        raise ValueError(
            f"config.method={config.method!r} is not one of {OBJECTIVES} "
            "nor a dotted module path defining build(config)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"config.method={config.method!r}: cannot import {module_name} ({e})") from e
    builder: Callable[[Any], Objective] = module.build
    return builder(config)
