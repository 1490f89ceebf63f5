"""Loading a run's config: a config file with its `:ARG` and overrides, or a workdir's config.json.

Both end the same way: the plug-ins named in the `plugins` key are imported (their config
groups and registrations count), the values are written over `default_config()` (so a file
or an old config.json that leaves keys out gets their defaults, and a misspelt key is an
error), and every value is checked against the schema. The workdir's config.json is the
run's truth: `saved_config` reads it, and `conflicts` says which keys a re-run would change.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from vlp_jax import builtin_plugins  # noqa: F401  (registers the built-in plug-ins)
from vlp_jax.config import (
    ConfigError,
    apply_overrides,
    check_values,
    default_config,
    merge,
    parse_literal,
    spec,
    value_at,
)
from vlp_jax.paths import as_path

CONFIG_JSON = 'config.json'
CHANGES_JSONL = 'config_changes.jsonl'
# Keys of config.json files written before the schema moved them: old path -> new path (None: dropped,
# the model's key is the one that counts).
LEGACY_KEYS = {
    'lr': 'optim.lr',
    'warmup_steps': 'optim.warmup_steps',
    'min_lr_ratio': 'optim.min_lr_ratio',
    'weight_decay': 'optim.weight_decay',
    'grad_clip': 'optim.grad_clip',
    'adam_b2': 'optim.adam_b2',
    'sampling.queue_size': 'sampling.grit.queue_size',
    'sampling.search_space': 'sampling.grit.search_space',
    'sampling.scope': 'sampling.grit.scope',
    'loss.queue_size': 'loss.momentum.queue_size',
    'data.path': 'data.records.path',
    'data.eval_path': 'data.records.eval_path',
    'data.tfds_dir': 'data.tfds.data_dir',
    'data.train_size': 'data.shapes.train_size',
    'data.val_size': 'data.shapes.val_size',
    'data.test_size': 'data.shapes.test_size',
    'data.captions_per_image': 'data.shapes.captions_per_image',
    'data.caption_noise': 'data.shapes.caption_noise',
    'data.detail': 'data.shapes.detail',
    'data.image_size': None,
    'data.max_text_len': None,
}


def _import_plugins(names: Sequence[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            raise ConfigError(
                f'config key plugins names module {name!r}, which cannot be imported ({error}); '
                'put it on PYTHONPATH or fix the name.'
            ) from None


def _plugins_in(overrides: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    for key, text in overrides:
        if key == 'plugins':
            value = parse_literal(text)
            if isinstance(value, str):
                value = tuple(part.strip() for part in value.strip('()[]').split(',') if part.strip())
            return tuple(value)
    return ()


def complete(values: Any, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """`values` (a config file's result or a parsed config.json) over the defaults, then `overrides`,
    checked: the full config of a run. Plug-in modules it names are imported first."""

    _import_plugins(_plugins_in(overrides))
    named = values.get('plugins', ()) if hasattr(values, 'get') else ()
    _import_plugins(tuple(named or ()))
    config = default_config()
    merge(config, values)
    apply_overrides(config, overrides)
    check_values(config)
    return config


def load_config_file(path_and_arg: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """`path/to/config.py[:ARG]`: its `get_config(arg)` over the defaults, then `overrides`, checked."""
    path, _, arg = path_and_arg.partition(':')
    if not os.path.isfile(path):
        raise ConfigError(f'config file {path!r} does not exist; pass --config configs/NAME.py[:ARG].')

    _import_plugins(_plugins_in(overrides))  # before the file: it may build on their groups
    module_spec = importlib.util.spec_from_file_location('vlp_jax_user_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'config file {path!r} has no get_config(arg) function.')
    values = module.get_config(arg or None)
    if not isinstance(values, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f'get_config in {path!r} must return an ml_collections.ConfigDict.')
    return complete(values, overrides)


def from_sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of the file `name` beside `config_file` (with its ARG): configs that vary another one."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    return load_config_file(f'{path}:{arg}' if arg else path)


def _migrate(values: dict) -> dict:
    """A config.json of an older layout moved to today's key paths (LEGACY_KEYS), with the keys that split
    one old key in two given the old one's value, so the run evaluates as it did."""
    values = json.loads(json.dumps(values))  # a deep copy
    data, evaluation = values.get('data', {}), values.get('eval', {})
    if 'test_size' in data and 'retrieval_size' not in evaluation:  # it capped every retrieval set
        evaluation['retrieval_size'] = data['test_size']
        if data.get('name') == 'records':
            data.setdefault('records', {}).setdefault('test_size', data['test_size'])
    if 'classification_size' in evaluation and 'shapes' not in data:  # it sized the shapes' zero-shot sets
        data.setdefault('shapes', {})['classification_size'] = evaluation['classification_size']
    for old, new in LEGACY_KEYS.items():
        group_path, _, name = old.rpartition('.')
        node = values
        for part in group_path.split('.') if group_path else ():
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or name not in node or spec(old) is not None:
            continue
        value = node.pop(name)
        if new is None:
            continue
        target = values
        *parents, leaf = new.split('.')
        for part in parents:
            target = target.setdefault(part, {})
        target.setdefault(leaf, value)
    if 'objective' not in values and values.get('model', {}).get('kind') == 'fusion':
        values['objective'] = 'albef'  # before objectives were named, a fusion model meant ALBEF's
    return values


def saved_config(workdir: str | os.PathLike, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """The run's own config from WORKDIR/config.json (+ overrides); ConfigError when there is none."""
    path = as_path(workdir) / CONFIG_JSON
    if not path.exists():
        raise ConfigError(f'{path} does not exist: {workdir} holds no run; pass --config to start one.')
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} cannot be read ({error}); pass --config to name the run's config.") from None
    return complete(_migrate(values), overrides)


def has_saved_config(workdir: str | os.PathLike) -> bool:
    return (as_path(workdir) / CONFIG_JSON).exists()


def conflicts(saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(keys that differ and may not change on resume, keys that differ and may), as dotted paths."""
    refused, allowed = [], []
    for item in _keys_of(saved):
        old, new = value_at(saved, item), value_at(given, item)
        if _canonical(old) == _canonical(new):
            continue
        key_spec = spec(item)
        (allowed if key_spec is not None and key_spec.resume else refused).append(item)
    return refused, allowed


def _keys_of(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
    out = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_keys_of(value, f'{prefix}{name}.'))
        else:
            out.append(f'{prefix}{name}')
    return out


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists alike, as config.json stores them


def describe(config: ml_collections.ConfigDict, keys: Sequence[str]) -> str:
    return ', '.join(f'{key}={_canonical(value_at(config, key))!r}' for key in keys)


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    (as_path(workdir) / CONFIG_JSON).write_text(config.to_json(indent=1))


def record_changes(
    workdir: str | os.PathLike, step: int, saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict, keys
) -> None:
    """Appends one line per changed key to WORKDIR/config_changes.jsonl and writes the new config.json."""
    path = as_path(workdir) / CHANGES_JSONL
    lines = [
        json.dumps(
            {'step': step, 'key': key, 'old': _canonical(value_at(saved, key)), 'new': _canonical(value_at(given, key))}
        )
        for key in keys
    ]
    previous = path.read_text() if path.exists() else ''
    path.write_text(previous + ''.join(line + '\n' for line in lines))
    write_config(workdir, given)


def model_config_of(path: str | os.PathLike) -> dict | None:
    """The model config of the run a checkpoint path belongs to: its workdir's config.json when the path is
    inside one (the run's truth), else what the checkpoint saved beside its params; None if neither says."""
    from vlp_jax.checkpointing import CHECKPOINTS_SUBDIR, read_model_config, resolve_step_dir

    step_dir = resolve_step_dir(as_path(path))
    workdir = step_dir.parent.parent
    if step_dir.parent.name == CHECKPOINTS_SUBDIR and has_saved_config(workdir):
        return saved_config(workdir).model.to_dict()
    return read_model_config(step_dir)
