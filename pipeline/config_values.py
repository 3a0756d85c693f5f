"""One config value: a `section.key=value` override parsed, a value checked against the type of
its field (pipeline/config.py builds the whole config from these)."""

from __future__ import annotations

import typing
from typing import Any, Literal

import yaml

from pipeline.errors import ConfigError


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, YAML-typed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} is not section.key=value (for example optim.lr=0.02)")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return section.strip(), key.strip(), value


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation; ints are accepted for floats."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; users write it constantly.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    raise AssertionError(f"{where}: unsupported annotation {hint!r}")
