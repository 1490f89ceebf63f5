"""`--config_help[=GROUP]`: every key with its type, default and help, group by group."""

from __future__ import annotations

from vlp_jax.config.errors import ConfigError
from vlp_jax.config.schema import GROUPS, group_keys


def _type_name(annotation) -> str:
    return getattr(annotation, '__name__', str(annotation))


def help_text(selected: str = '') -> str:
    """The keys of group `selected` and of the groups below it ('' = all), one line each."""
    paths = [p for p in sorted(GROUPS) if not selected or p == selected or p.startswith(selected + '.')]
    if not paths:
        groups = ', '.join(repr(p) for p in sorted(GROUPS) if p)
        raise ConfigError(f'--config_help={selected!r} names no config group; groups: {groups}.')
    lines = []
    for path in paths:
        doc = (GROUPS[path].__doc__ or '').strip().splitlines()[0] if GROUPS[path].__doc__ else ''
        lines.append(f'[{path or "top level"}] {doc}')
        for item in group_keys(path):
            resume = ' (may change on resume)' if item.resume else ''
            choices = f' {{{", ".join(map(repr, item.choices))}}}' if item.choices else ''
            lines.append(f'  {item.path} : {_type_name(item.type)} = {item.default!r}{choices}  {item.help}{resume}')
        lines.append('')
    return '\n'.join(lines).rstrip() + '\n'
