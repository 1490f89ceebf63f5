"""The config schema and the machinery around it; a leaf: it imports nothing else from vlp_jax.

- schema.py: `key`/`group` declare every key once (type, default, help, check); `default_config()`,
  `settings_of(config, Group)` (the typed settings a module receives), `check_values`.
- core.py: the core groups (run, optim, model, data, loss, sampling, mesh, eval). Plug-ins declare
  theirs where they live.
- arguments.py: the one `:ARG` syntax of config files; overrides.py: `--config.key=value`.
- help.py: `--config_help`.

Loading a config file or a workdir's config.json (which needs the plug-ins registered) is
vlp_jax/config_files.py.
"""

from vlp_jax.config import core
from vlp_jax.config.arguments import parse_arg
from vlp_jax.config.core import (
    DataSettings,
    EvalSettings,
    LossSettings,
    MeshSettings,
    ModelSettings,
    OptimSettings,
    RunSettings,
    SamplingSettings,
    TextSettings,
    VisionSettings,
)
from vlp_jax.config.errors import ConfigError
from vlp_jax.config.help import help_text
from vlp_jax.config.overrides import apply_overrides, merge, parse_literal, set_value, split_overrides
from vlp_jax.config.schema import (
    GROUPS,
    KeySpec,
    all_keys,
    at_least,
    check_values,
    declare,
    default_config,
    group,
    in_range,
    key,
    node_at,
    non_negative,
    positive,
    positive_int,
    settings_of,
    spec,
    value_at,
)

MESH_AXES = core.MESH_AXES

__all__ = [
    'GROUPS',
    'MESH_AXES',
    'ConfigError',
    'DataSettings',
    'EvalSettings',
    'KeySpec',
    'LossSettings',
    'MeshSettings',
    'ModelSettings',
    'OptimSettings',
    'RunSettings',
    'SamplingSettings',
    'TextSettings',
    'VisionSettings',
    'all_keys',
    'apply_overrides',
    'at_least',
    'check_values',
    'declare',
    'default_config',
    'group',
    'help_text',
    'in_range',
    'key',
    'merge',
    'node_at',
    'non_negative',
    'parse_arg',
    'parse_literal',
    'positive',
    'positive_int',
    'set_value',
    'settings_of',
    'spec',
    'split_overrides',
    'value_at',
]
