"""Reading a config: `path/to/config.py:arg` plus `--config.a.b=value` overrides, and the parser of `arg`.

    config = load_config("configs/slicer.py:local,encoder=vit", ["--config.train.steps=100"])

* `load_config(spec, overrides)`: imports the file, calls its `get_config(arg)`, applies the overrides.
  The same function serves `audiossl pretrain --config` (cli.py), the benchmarks, the launch planners
  and the tests.
* `apply_overrides(config, overrides)`: each `a.b=value` (or `--config.a.b=value`) must name an
  existing field; the text is converted to that field's type (int, float, bool, str, tuple), and a
  misspelt field or a value of the wrong type is a `ValueError` naming the field.
* `parse_arg(arg, name=..., variant="base", ...)`: what every `configs/*.py` `get_config(arg)` calls on
  its argument, "variant,key=value,..." (big_vision's `parse_arg`): the first item may be a bare value
  (the first key's, the variant), each value is converted to the type of its default, and an unknown
  key or a value outside `choices` is a `ValueError` naming the config file.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

OVERRIDE_PREFIX = "--config."
_TRUE, _FALSE = ("true", "1"), ("false", "0")


# ----------------------------------------------------------------------------- text -> typed value
def parse_value(text: str, field_type: type, default: Any = None) -> Any:
    """`text` as a value of `field_type`; ValueError (without the field's name) when it is not one.
    Booleans are strict (true/false/1/0, any case); a tuple is a Python literal ("(2,2,2)" or
    "2,2,2"), its elements converted like the elements of `default` when those share one type."""
    if field_type is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ValueError(f"expected a bool (true/false), got {text!r}")
    if field_type is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an int, got {text!r}") from None
    if field_type is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a float, got {text!r}") from None
    if field_type is str:
        return text
    if field_type in (tuple, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"expected a tuple such as (1, 2), got {text!r}") from None
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"expected a tuple such as (1, 2), got {text!r}")
        return field_type(_like_elements(value, default, text))
    raise ValueError(f"fields of type {field_type.__name__} cannot be set from text")


def _like_elements(value: Sequence, default: Any, text: str) -> list:
    """The elements of `value` checked against (and ints widened to) the one type of `default`'s."""
    types = {type(x) for x in default or ()}
    if len(types) != 1 or (kind := types.pop()) not in (bool, int, float, str):
        return list(value)
    out = []
    for x in value:
        if kind is float and type(x) is int:
            x = float(x)
        if type(x) is not kind:
            raise ValueError(f"expected a tuple of {kind.__name__}, got {text!r}")
        out.append(x)
    return out


# ----------------------------------------------------------------------------- overrides
def _split_override(item: str) -> tuple[str, str]:
    body = item[len(OVERRIDE_PREFIX) :] if item.startswith(OVERRIDE_PREFIX) else item
    key, sep, text = body.partition("=")
    if not sep or not key:
        raise ValueError(f"bad --config override {item!r}: expected --config.FIELD=VALUE")
    return key.strip(), text


def _no_field(path: str, node: ml_collections.ConfigDict, name: str, flag: str) -> ValueError:
    fields = sorted(node.keys())
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else f"; its fields: {', '.join(fields)}"
    return ValueError(f"bad --config override {flag}: {path} has no field {name!r}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Sets each `a.b=value` (or `--config.a.b=value`) on `config` in place and returns it. The field
    must exist and the text must parse as its type (`parse_value`); otherwise ValueError naming the
    flag and the field."""
    for item in overrides or ():
        key, text = _split_override(item)
        flag = f"{OVERRIDE_PREFIX}{key}={text}"
        node, path = config, "config"
        *parents, leaf = key.split(".")
        for part in parents:
            if part not in node:
                raise _no_field(path, node, part, flag)
            node, path = node[part], f"{path}.{part}"
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"bad --config override {flag}: {path} is a value, not a group of fields")
        if leaf not in node:
            raise _no_field(path, node, leaf, flag)
        field_type, current = node.get_type(leaf), node[leaf]
        if field_type is ml_collections.ConfigDict:
            raise ValueError(
                f"bad --config override {flag}: {path}.{leaf} is a group of fields; "
                f"set them one by one ({OVERRIDE_PREFIX}{key}.FIELD=VALUE)"
            )
        if field_type is type(None):
            raise ValueError(
                f"bad --config override {flag}: {path}.{leaf} is None with no declared type; "
                "the config file should declare it with ml_collections.config_dict.placeholder(TYPE)"
            )
        try:
            node[leaf] = parse_value(text, field_type, current)
        except ValueError as e:
            raise ValueError(f"bad --config override {flag}: {path}.{leaf} ({field_type.__name__}): {e}") from None
    return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides, the other arguments) of a command line: `--config.a.b=value` and the two-word
    `--config.a.b value` become "a.b=value"; everything else (`--config PATH`, ...) is left in order."""
    overrides, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(OVERRIDE_PREFIX):
            if "=" in arg:
                overrides.append(arg[len(OVERRIDE_PREFIX) :])
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                overrides.append(f"{arg[len(OVERRIDE_PREFIX) :]}={args[i + 1]}")
                i += 1
            else:
                raise ValueError(f"bad --config override {arg}: expected {arg}=VALUE")
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


# ----------------------------------------------------------------------------- config files
def load_config(spec: str, overrides: Iterable[str] = (), *, lock: bool = False) -> ml_collections.ConfigDict:
    """The config of "path/to/config.py[:arg]": the file's `get_config(arg)` (`get_config(None)` without
    an arg), then `overrides` (`apply_overrides`). `lock`: no field can be added afterwards (the CLI's
    config, so that code reading a misspelt field fails too)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(
        "audiossl_config_" + os.path.splitext(os.path.basename(path))[0], path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg)")
    config = apply_overrides(module.get_config(arg or None), overrides)
    if lock:
        config.lock()
    return config


def parse_arg(
    arg: str | None, *, name: str, choices: Mapping[str, Sequence[Any]] | None = None, **defaults: Any
) -> ml_collections.ConfigDict:
    """The argument of a config file's `get_config(arg)`, "variant,key=value,..." -> ConfigDict.

    `defaults` declares the keys, in order, with their default values, whose types convert the text
    (bool strictly: true/false/1/0); the first item of `arg` may be a bare value, that of the first
    key (`parse_arg("local", name=..., variant="paper")` -> variant="local"). `choices` limits a key to
    some values. An unknown key, a repeated key, a bad value or a bare value after the first item is
    a ValueError that starts with `name` (the config file)."""
    if not defaults:
        raise TypeError("parse_arg needs at least one key with its default")
    for key, default in defaults.items():
        if type(default) not in (bool, int, float, str):
            raise TypeError(f"parse_arg: the default of {key!r} must be a bool, int, float or str, not {default!r}")
    choices = dict(choices or {})
    first = next(iter(defaults))
    parsed = dict(defaults)
    seen: set[str] = set()
    for i, item in enumerate(t.strip() for t in (arg or "").split(",") if t.strip()):
        if "=" in item:
            key, text = (s.strip() for s in item.split("=", 1))
        elif i == 0:
            key, text = first, item
        else:
            raise ValueError(
                f"{name}: {item!r} in {arg!r} is not key=value (only the first item, the {first}, may be a bare value)"
            )
        if key not in defaults:
            raise ValueError(f"{name}: unknown option {key!r} in {arg!r}; options: {tuple(defaults)}")
        if key in seen:
            raise ValueError(f"{name}: {key} is given twice in {arg!r}")
        seen.add(key)
        try:
            parsed[key] = parse_value(text, type(defaults[key]))
        except ValueError as e:
            raise ValueError(f"{name}: {key} in {arg!r}: {e}") from None
    for key, allowed in choices.items():
        if parsed[key] not in tuple(allowed):
            raise ValueError(f"{name}: unknown {key} {parsed[key]!r}; choose one of {tuple(allowed)}")
    return ml_collections.ConfigDict(parsed)
