"""The one `:ARG` syntax of every config file: `configs/NAME.py:flag,key=value,...`.

A config file declares what its argument may hold as keyword defaults:

    def get_config(arg=None):
        args = parse_arg(arg, tiny=False, steps=600)

Each comma-separated token is `key=value` (converted to the default's type) or a bare
flag (a bool default, set True). Anything else is one ConfigError naming the token.
"""

from __future__ import annotations

import types
from typing import Any

from vlp_jax.config.errors import ConfigError


def _convert(name: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ('true', '1', 'yes'):
            return True
        if lowered in ('false', '0', 'no'):
            return False
        raise ConfigError(f'config argument {name}={text!r} must be true or false.')
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f'config argument {name}={text!r} must be an integer.') from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f'config argument {name}={text!r} must be a number.') from None
    return text


def parse_arg(arg: str | None, **defaults: Any) -> types.SimpleNamespace:
    """`arg` ('tiny,steps=300') read against `defaults` (tiny=False, steps=600) -> a namespace of values."""
    values = dict(defaults)
    for token in (arg or '').split(','):
        token = token.strip()
        if not token:
            continue
        name, has_value, text = token.partition('=')
        name = name.strip()
        if name not in defaults:
            known = ', '.join(f'{k}=' if not isinstance(v, bool) else k for k, v in defaults.items()) or 'nothing'
            raise ConfigError(f'config argument {token!r} is unknown; this config file takes {known}.')
        if has_value:
            values[name] = _convert(name, text.strip(), defaults[name])
        elif isinstance(defaults[name], bool):
            values[name] = True
        else:
            raise ConfigError(f'config argument {name!r} needs a value: write {name}=VALUE.')
    return types.SimpleNamespace(**values)
