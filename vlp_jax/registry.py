"""Name -> plug-in, for every extension point: objectives, regulators, samplers, sources, evaluators, towers.

A plug-in is one class registered under a name. If it has config keys it brings its own
settings dataclass (`Settings`), which the registry declares as the config group
`<prefix>.<name>` (e.g. a regulator 'srcl' -> `loss.srcl`), so its keys exist in every
config, appear in `--config_help` and reach the plug-in typed. Registering works the same
from any module, inside the package or out of it: name the module in the `plugins` config
key (or import it before the config is loaded) and its registrations count.

    @REGULATORS.register('my_regulator')
    class MyRegulator(Regulator):
        Settings = MySettings  # a frozen dataclass of vlp_jax.config.key(...) fields
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from vlp_jax.config import ConfigError, declare

T = TypeVar('T')


class Registry(Generic[T]):
    """The plug-ins of one extension point, by name."""

    def __init__(self, kind: str, config_key: str, group_prefix: str | None = None):
        self.kind = kind
        self.config_key = config_key  # the key that names one (for error messages)
        self.group_prefix = group_prefix  # where a plug-in's Settings group goes
        self._entries: dict[str, T] = {}

    def register(self, name: str, groups: Mapping[str, type] | None = None) -> Callable[[T], T]:
        """Decorator: registers the class under `name`, declaring its `Settings` (and any other `groups`,
        path -> dataclass) as config groups. Registering a name twice with another class is an error."""

        def add(entry: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not entry:
                same = getattr(existing, '__qualname__', None) == getattr(entry, '__qualname__', None)
                assert same, f'{self.kind} {name!r} is registered twice: {existing} and {entry}'
            settings = getattr(entry, 'Settings', None)
            if settings is not None and dataclasses.is_dataclass(settings):
                assert self.group_prefix is not None, f'{self.kind} plug-ins declare their groups explicitly'
                declare(f'{self.group_prefix}.{name}' if self.group_prefix else name, settings)
            for path, cls in (groups or {}).items():
                declare(path, cls)
            if isinstance(entry, type):
                entry.registered_name = name
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The plug-in registered as `name`; an unknown name is one ConfigError naming the key and the choices."""
        if name not in self._entries:
            raise ConfigError(
                f'config key {self.config_key} names {name!r}, which is no registered {self.kind}; choose one of '
                f"{self.names()} or register yours (docs/extending.md) and list its module in the 'plugins' key."
            )
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def settings_group(self, name: str) -> str:
        """The config group path of plug-in `name`'s own settings."""
        assert self.group_prefix is not None
        return f'{self.group_prefix}.{name}' if self.group_prefix else name


OBJECTIVES: Registry[Any] = Registry('objective', 'objective')
REGULATORS: Registry[Any] = Registry('regulator', 'loss.regulators', 'loss')
SAMPLERS: Registry[Any] = Registry('sampler', 'sampling.name', 'sampling')
SOURCES: Registry[Any] = Registry('data source', 'data.name', 'data')
EVALUATORS: Registry[Any] = Registry('evaluator', 'eval.sets', None)
TOWERS: Registry[Any] = Registry('tower', 'model.vision.tower / model.text.tower', None)
