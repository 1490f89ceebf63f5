"""Config files, `--config.key=value` overrides, and the values a config resolves to.

A run is described by one ml_collections ConfigDict built by `get_config(arg)` in a
config file. Everything a user can get wrong here is reported as a `ConfigError`
with one sentence naming the key, before anything is compiled or written; the checks
of the values themselves live in vlp_jax/validation/ (`validate`).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

OVERRIDE_PREFIX = '--config.'
MESH_AXES = ('data', 'fsdp', 'model')
DATA_SOURCES = ('shapes', 'records', 'tfds')
# Keys every config has, added where a config file leaves them out (so --config.KEY= works on any config).
# data.path / data.eval_path: prepared records (data.name='records'); data.tfds*: data.name='tfds';
# eval.sets: what evaluation runs (vlp_jax/data/eval_specs.py); eval.prompt_templates: zero-shot class prompts;
# optim.frozen: a regex of params to lock ('' = none); optim.lr_multipliers: ((regex, lr multiplier), ...)
# (vlp_jax/optim.py).
DEFAULT_GROUPS = ('optim',)  # created when a config file has no such group
DEFAULT_KEYS = {
    'data.path': '',
    'data.eval_path': '',
    'data.tfds_dir': '',
    'data.tfds': {
        'name': 'coco_captions',
        'train_split': 'train',
        'eval_split': 'test',
        'image_key': 'image',
        'caption_key': 'captions/text',
        'label_key': '',
    },
    'eval.sets': ('default',),
    'eval.prompt_templates': ('a photo of a {}.', 'a picture of a {}.', 'an image of a {}.'),
    'optim.frozen': '',
    'optim.lr_multipliers': (),
}


class ConfigError(ValueError):
    """A problem with the config the user handed in; its message is one sentence."""


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=v` arguments from the rest of argv (absl parses the rest)."""
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


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`."""
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise ConfigError(f'config file {path!r} does not exist; pass --config configs/NAME.py[:ARG].')
    module_spec = importlib.util.spec_from_file_location('vlp_jax_user_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'config file {path!r} has no get_config(arg) function.')
    config = module.get_config(arg) if arg else module.get_config(None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f'get_config in {path!r} must return an ml_collections.ConfigDict.')
    add_default_keys(config)
    return config


def add_default_keys(config: ml_collections.ConfigDict) -> None:
    """Adds DEFAULT_GROUPS and each of DEFAULT_KEYS that the config lacks (other missing groups stay missing)."""
    with config.unlocked():
        for group in DEFAULT_GROUPS:
            if group not in config:
                config[group] = ml_collections.ConfigDict()
    for dotted, value in DEFAULT_KEYS.items():
        group, _, key = dotted.rpartition('.')
        if group not in config or key in config[group]:
            continue
        with config[group].unlocked():
            config[group][key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def sibling_config(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of the config file `name` beside `config_file`: configs build on each other."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    return load_config_file(f'{path}:{arg}' if arg else path)


def _parse_literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    if lowered in ('none', 'null'):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Converts an override to the type the config declares, or says why it cannot."""
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
            return type(old)(new)
        if isinstance(new, str):  # `a,b` or `(a,b)` or `['a','b']` with bare or quoted names
            items = (item.strip().strip('\'"') for item in new.strip().strip('()[]').split(','))
            return type(old)(item for item in items if item)
        raise ConfigError(f'config key {key!r} must be a list, got {new!r}.')
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f'config key {key!r} is a group; set one of its keys, e.g. --config.{key}.NAME=VALUE.')
    return new


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
    """Sets each dotted key; unknown keys and wrong types raise ConfigError."""
    for dotted, text in overrides:
        parts = dotted.split('.')
        node = config
        for depth, part in enumerate(parts):
            here = '.'.join(parts[: depth + 1])
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f'unknown config key {here!r}; check the spelling against the config file.')
            if depth < len(parts) - 1:
                node = node[part]
        old = node[parts[-1]]
        value = _coerce(dotted, old, _parse_literal(text))
        with node.unlocked():
            node[parts[-1]] = value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive_int(config: ml_collections.ConfigDict, key: str) -> None:
    value = config
    for part in key.split('.'):
        value = value[part]
    _require(isinstance(value, int) and value > 0, f'config key {key!r} must be a positive integer, got {value!r}.')


def mesh_shape(config: ml_collections.ConfigDict, device_count: int) -> dict[str, int]:
    """Resolves the mesh sizes (one axis may be -1: all remaining devices)."""
    sizes = {axis: int(config.mesh[axis]) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    _require(len(free) <= 1, f'only one of mesh.{"/".join(MESH_AXES)} may be -1, got {sizes}.')
    for axis, size in sizes.items():
        _require(size == -1 or size >= 1, f'config key mesh.{axis} must be -1 or a positive integer, got {size}.')
    fixed = 1
    for axis, size in sizes.items():
        if size != -1:
            fixed *= size
    if free:
        _require(
            device_count % fixed == 0, f'mesh sizes {sizes} do not divide the {device_count} devices; change mesh.*.'
        )
        sizes[free[0]] = device_count // fixed
    _require(
        fixed * (sizes[free[0]] if free else 1) == device_count,
        f'mesh {sizes} needs {fixed} devices but {device_count} are present; change mesh.*.',
    )
    return sizes


def local_shards(config: ml_collections.ConfigDict, batch_shards: int) -> int:
    """What 'local' means (sampling.scope, loss.negatives): mesh.local_shards, -1 = the mesh's batch shards."""
    value = int(config.mesh.get('local_shards', -1))
    return batch_shards if value == -1 else value


def srcl_needs_reference(config: ml_collections.ConfigDict) -> bool:
    """SRCL reads the reference model's similarities whenever its alpha schedule is above 0."""
    return max(config.loss.srcl.alpha_start, config.loss.srcl.alpha_end) > 0


def alpha_decay_end(config: ml_collections.ConfigDict) -> int:
    """loss.srcl.alpha_decay_end with -1 resolved to total_steps."""
    end = int(config.loss.srcl.alpha_decay_end)
    return int(config.total_steps) if end == -1 else end


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Global batches per epoch (a tail short of a batch is dropped)."""
    return int(config.data.train_size) // int(config.batch_size)


def distill_ramp_steps(config: ml_collections.ConfigDict) -> int:
    """Steps over which ALBEF's distillation weight rises from 0 (-1 resolved to one epoch, as ALBEF)."""
    value = int(config.loss.momentum.alpha_ramp_steps)
    return steps_per_epoch(config) if value == -1 else value


def smoothing_start(config: ml_collections.ConfigDict, value: int) -> int:
    """A smoothing start step with -1 resolved to the first step of epoch 1.

    MAFA smooths "from the second epoch on, once grouped batches start": with GRIT that is
    its first grouped epoch; without GRIT it is the same step, the start of the second pass.
    """
    return steps_per_epoch(config) if int(value) == -1 else int(value)


def validate(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Checks values that would otherwise fail late (after compilation) or silently (vlp_jax/validation/)."""
    from vlp_jax.validation import validate_config  # the checks import the models: only once flags are parsed

    validate_config(config, device_count)
