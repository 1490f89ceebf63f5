"""The schema: every config key declared once, as a field of a settings dataclass registered for its group.

A group is a frozen dataclass registered at a dotted path ('' = the top level, 'optim',
'loss.srcl', ...). Its fields are the group's keys; `key(default, help, ...)` declares one
with its one-line help, its allowed values or check, and whether it may change when a run
resumes. From the registered groups come the full default ConfigDict, the check of every
value, `--config_help`, and the typed settings a module receives (`settings_of`).

Plug-ins (regulators, samplers, sources, objectives, towers) register their own groups when
they register themselves (vlp_jax/registry.py), so a plug-in's keys exist in every config.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import ml_collections

from vlp_jax.config.errors import ConfigError

T = TypeVar('T')
Check = Callable[[Any], str | None]  # value -> what is wrong with it (a phrase), or None

_HELP, _CHOICES, _CHECK, _RESUME = 'help', 'choices', 'check', 'resume'
# path -> the settings dataclass declaring that group's keys ('' is the top level).
GROUPS: dict[str, type] = {}


def key(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    check: Check | None = None,
    resume: bool = False,
) -> Any:
    """One config key: its default, one line of help, its allowed values or a check, and whether a
    resumed run may change it (`resume=True`: the change is recorded, the run goes on)."""
    metadata = {_HELP: help, _CHOICES: tuple(choices) if choices is not None else None, _CHECK: check, _RESUME: resume}
    return dataclasses.field(default=default, metadata=metadata)


def group(path: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: declares the dataclass as the schema of group `path`."""

    def register(cls: type[T]) -> type[T]:
        declare(path, cls)
        return cls

    return register


def declare(path: str, cls: type) -> None:
    """Registers `cls` (a dataclass) as group `path`; declaring one path twice with two classes is a bug."""
    assert dataclasses.is_dataclass(cls), f'{cls} must be a dataclass to declare config group {path!r}'
    existing = GROUPS.get(path)
    assert existing is None or existing.__qualname__ == cls.__qualname__, (
        f'config group {path!r} is declared twice: {existing} and {cls}'
    )
    parent, _, name = path.rpartition('.')
    if path:
        parent_cls = GROUPS.get(parent)
        assert parent_cls is not None, f'declare group {parent!r} before its child {path!r}'
        assert name not in {f.name for f in dataclasses.fields(parent_cls)}, (
            f'config group {path!r} clashes with the key {name!r} of group {parent!r}'
        )
    GROUPS[path] = cls


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """What the schema says of one key."""

    path: str
    type: Any
    default: Any
    help: str
    choices: tuple | None
    check: Check | None
    resume: bool


def _join(group_path: str, name: str) -> str:
    return f'{group_path}.{name}' if group_path else name


def group_keys(path: str) -> list[KeySpec]:
    cls = GROUPS[path]
    hints = typing.get_type_hints(cls)
    return [
        KeySpec(
            _join(path, f.name),
            hints[f.name],
            f.default,
            f.metadata.get(_HELP, ''),
            f.metadata.get(_CHOICES),
            f.metadata.get(_CHECK),
            bool(f.metadata.get(_RESUME, False)),
        )
        for f in dataclasses.fields(cls)
    ]


def all_keys() -> Iterator[KeySpec]:
    """Every declared key, group by group in path order."""
    for path in sorted(GROUPS):
        yield from group_keys(path)


def spec(path: str) -> KeySpec | None:
    """The KeySpec of a dotted key path, or None when no group declares it."""
    group_path, _, name = path.rpartition('.')
    if group_path not in GROUPS:
        return None
    return next((s for s in group_keys(group_path) if s.path == path), None)


def default_config() -> ml_collections.ConfigDict:
    """Every registered group with its defaults, locked (a misspelt key in a config file is an error)."""
    config = ml_collections.ConfigDict()
    for path in sorted(GROUPS, key=lambda p: (p.count('.') if p else -1, p)):
        node = node_at(config, path, create=True)
        with node.unlocked():
            for item in group_keys(path):
                node[item.path.rpartition('.')[2]] = item.default
    config.lock()
    return config


def node_at(config: ml_collections.ConfigDict, path: str, create: bool = False) -> ml_collections.ConfigDict:
    """The ConfigDict of group `path` inside `config` ('' = config itself)."""
    node = config
    for part in path.split('.') if path else ():
        if part not in node:
            if not create:
                raise ConfigError(
                    f'config group {path!r} is missing; build configs from vlp_jax.config.default_config().'
                )
            with node.unlocked():
                node[part] = ml_collections.ConfigDict()
        node = node[part]
    return node


def value_at(config: ml_collections.ConfigDict, path: str) -> Any:
    group_path, _, name = path.rpartition('.')
    return node_at(config, group_path)[name]


def settings_of(config: ml_collections.ConfigDict, cls: type[T]) -> T:
    """The typed settings of the group `cls` declares, read from `config` (lists become tuples)."""
    path = next((p for p, c in GROUPS.items() if c is cls), None)
    assert path is not None, f'{cls} is not a declared config group'
    node = node_at(config, path)
    values = {}
    for item in group_keys(path):
        value = node[item.path.rpartition('.')[2]]
        values[item.path.rpartition('.')[2]] = _freeze(value)
    return cls(**values)


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def check_values(config: ml_collections.ConfigDict) -> None:
    """Every key's allowed values and check; the first problem raises ConfigError naming the key."""
    for item in all_keys():
        value = value_at(config, item.path)
        if item.choices is not None and value not in item.choices:
            raise ConfigError(f'config key {item.path} must be one of {item.choices}, got {value!r}.')
        if item.check is not None:
            problem = item.check(value)
            if problem:
                raise ConfigError(f'config key {item.path} {problem}, got {value!r}.')


# ---------------------------------------------------------------- checks to declare keys with


def positive(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 'must be > 0'


def positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else 'must be a positive integer'


def non_negative(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 'must be >= 0'


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A check that the value lies in [low, high] (or an open end)."""
    left, right = '(' if low_open else '[', ')' if high_open else ']'

    def check(value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f'must be a number in {left}{low}, {high}{right}'
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        return None if ok else f'must be in {left}{low}, {high}{right}'

    return check


def at_least(minimum: int, meaning: str = '') -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f'must be an integer >= {minimum}{meaning}'

    return check
