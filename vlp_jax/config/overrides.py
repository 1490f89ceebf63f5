"""`--config.key=value` overrides: split from argv, parsed as Python literals, coerced to the key's type."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import ml_collections

from vlp_jax.config.errors import ConfigError

OVERRIDE_PREFIX = '--config.'


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=v` (or `--config.a.b v`) arguments from the rest of argv (absl parses the rest)."""
    rest, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX) :]
            if '=' in body:
                key, value = body.split('=', 1)
            elif i + 1 < len(args):
                key, value = body, args[i + 1]
                i += 1
            else:
                raise ConfigError(f'override --config.{body} has no value; write --config.{body}=VALUE.')
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse_literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    if lowered in ('none', 'null'):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def coerce(key: str, old: Any, new: Any) -> Any:
    """Converts a value to the type of the key's current value, or says why it cannot."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        raise ConfigError(f'config key {key!r} must be true or false, got {new!r}.')
    if isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        raise ConfigError(f'config key {key!r} must be an integer, got {new!r}.')
    if isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        raise ConfigError(f'config key {key!r} must be a number, got {new!r}.')
    if isinstance(old, str):
        return new if isinstance(new, str) else str(new)
    if isinstance(old, (tuple, list)):
        if isinstance(new, (tuple, list)):
            return tuple(new)
        if isinstance(new, str):  # `a,b` or `(a,b)` or `['a','b']` with bare or quoted names
            items = (item.strip().strip('\'"') for item in new.strip().strip('()[]').split(','))
            return tuple(item for item in items if item)
        raise ConfigError(f'config key {key!r} must be a list, got {new!r}.')
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f'config key {key!r} is a group; set one of its keys, e.g. --config.{key}.NAME=VALUE.')
    return new


def set_value(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets one existing key (typed like its current value); an unknown key raises ConfigError naming it."""
    parts = dotted.split('.')
    node = config
    for depth, part in enumerate(parts):
        here = '.'.join(parts[: depth + 1])
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(
                f'unknown config key {here!r}; check the spelling (python -m vlp_jax.train --config_help lists them).'
            )
        if depth < len(parts) - 1:
            node = node[part]
    coerced = coerce(dotted, node[parts[-1]], value)
    with node.unlocked():
        node[parts[-1]] = coerced


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
    """Sets each `(dotted key, text)`; unknown keys and wrong types raise ConfigError."""
    for dotted, text in overrides:
        set_value(config, dotted, parse_literal(text))


def merge(base: ml_collections.ConfigDict, values: Any, prefix: str = '') -> None:
    """Writes the nested `values` (a ConfigDict or dict, e.g. a config file's result or config.json) over
    `base` key by key; a key `base` lacks raises ConfigError naming it."""
    for name, value in values.items() if hasattr(values, 'items') else ():
        dotted = f'{prefix}{name}'
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            if name not in base or not isinstance(base[name], ml_collections.ConfigDict):
                raise ConfigError(f'unknown config group {dotted!r}; check the spelling against --config_help.')
            merge(base[name], value, f'{dotted}.')
        else:
            if name not in base:
                raise ConfigError(
                    f'unknown config key {dotted!r}; check the spelling (python -m vlp_jax.train --config_help).'
                )
            coerced = coerce(dotted, base[name], value)
            with base.unlocked():
                base[name] = coerced
