"""AdamW with linear warmup + cosine decay, global-norm clipping, a decay mask, locked params and
per-param learning-rate multipliers.

Weight decay applies to matrices (kernels, embeddings) only: biases, norm scales,
the temperature and the sigmoid bias are scalars/vectors and are never decayed.

Params are named by their '/'-joined path, e.g. 'vision/encoder/block_0/attn/query/kernel',
'image_proj/kernel', 'log_temperature'; a pattern must match the WHOLE path (re.fullmatch), as
in big_vision's schedule lists, so 'vision/.*' locks the image tower and 'vision' matches nothing.

- `optim.frozen` (LiT's locked tower): a regex; matching params get no update and the optimizer
  keeps NO state for them (optax.multi_transform hands the AdamW branch only the trained leaves),
  so locking a tower also drops its two Adam moments. They take no part in clipping's global
  norm and get no weight decay. '' locks nothing. The step differentiates through
  `stop_locked_gradients`, so their weight gradients are never computed either: a locked tower
  at the input end runs forward only, and `train/grad_norm` and `train/mfu` count trained params.
- `optim.lr_multipliers`: ((regex, multiplier), ...); the first pattern matching a param scales
  its whole AdamW update (decoupled decay included), as if its lr were lr * multiplier. Params
  no pattern matches keep multiplier 1.

With neither set, the optimizer (and so its state and checkpoints) is exactly the plain chain.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax
from flax import linen as nn

from vlp_jax.config import DEFAULT_KEYS  # config.py adds the `optim` group's keys to every loaded config
from vlp_jax.models.param_paths import path_key

MIN_DECAYED_NDIM = 2  # parameters with fewer dims (biases, norm scales, temperature) are not decayed
FROZEN, TRAINED = 'frozen', 'trained'  # multi_transform labels

Multipliers = tuple[tuple[str, float], ...]


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.total_steps, config.warmup_steps + 1),
        end_value=config.lr * config.min_lr_ratio,
    )


def weight_decay_mask(params: Any) -> Any:
    """True for the leaves that get weight decay (matrices), False for vectors and scalars."""
    return jax.tree.map(lambda p: p.ndim >= MIN_DECAYED_NDIM, params)


def _is_param(leaf: Any) -> bool:
    """Boxed params (nn.Partitioned, under eval_shape and init) are leaves here, not their `.value`."""
    return isinstance(leaf, nn.meta.AxisMetadata)


def param_names(params: Any) -> list[str]:
    """Every param's path name, in tree order (boxed or plain params)."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_param)[0]
    return [path_key(path) for path, _ in flat]


def optim_settings(config: ml_collections.ConfigDict) -> tuple[str, Multipliers]:
    """(frozen pattern, multipliers) from `config.optim`, defaults where the group or a key is absent."""
    group = config.get('optim') or {}
    frozen = str(group.get('frozen', DEFAULT_KEYS['optim.frozen']) or '')
    pairs = tuple(group.get('lr_multipliers', DEFAULT_KEYS['optim.lr_multipliers']) or ())
    return frozen, tuple((str(pattern), float(multiplier)) for pattern, multiplier in pairs)


def multiplier_for(name: str, multipliers: Multipliers) -> float:
    """The first matching pattern's multiplier, else 1."""
    for pattern, multiplier in multipliers:
        if re.fullmatch(pattern, name):
            return multiplier
    return 1.0


def param_labels(params: Any, frozen: str) -> Any:
    """FROZEN or TRAINED per param (a prefix tree of boxed params, the same tree for plain ones)."""
    label = lambda path, _: FROZEN if frozen and re.fullmatch(frozen, path_key(path)) else TRAINED
    return jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_param)


def stop_locked_gradients(config: ml_collections.ConfigDict) -> Callable[[Any], Any]:
    """params -> params with `jax.lax.stop_gradient` on the params `optim.frozen` locks (identity if none).

    Applied inside the differentiated function, so JAX emits no backward pass for a locked
    param: its gradient is an exact zero, not one computed and then discarded by the optimizer.
    """
    frozen, _ = optim_settings(config)
    if not frozen:
        return lambda params: params

    def lock(params: Any) -> Any:
        labels = param_labels(params, frozen)
        stop = lambda label, param: jax.lax.stop_gradient(param) if label == FROZEN else param
        return jax.tree.map(stop, labels, params)

    return lock


def scale_by_multipliers(multipliers: Multipliers) -> optax.GradientTransformation:
    """Stateless: each update times its param's multiplier (multiplier_for on its path name)."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params

        def scale(path, update):
            multiplier = multiplier_for(path_key(path), multipliers)
            return update if multiplier == 1.0 else update * multiplier

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """clip -> AdamW(schedule, decay mask) [-> lr multipliers], on the trained params only."""
    frozen, multipliers = optim_settings(config)
    parts = []
    if config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate=learning_rate_schedule(config),
            b2=config.adam_b2,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    if multipliers:
        parts.append(scale_by_multipliers(multipliers))
    trained = optax.chain(*parts)
    if not frozen:
        return trained
    labels = functools.partial(param_labels, frozen=frozen)
    return optax.multi_transform({TRAINED: trained, FROZEN: optax.set_to_zero()}, labels)


def optim_problem(config: ml_collections.ConfigDict, names: Sequence[str]) -> str | None:
    """One sentence on what is wrong with `optim.frozen` / `optim.lr_multipliers` for params `names`, or None."""
    group = config.get('optim') or {}
    frozen = group.get('frozen', '')
    if not isinstance(frozen, str):
        return f"config key optim.frozen must be a regex string ('' = nothing locked), got {frozen!r}."
    try:
        re.compile(frozen)
    except re.error as error:
        return f'config key optim.frozen = {frozen!r} is not a valid regex ({error}).'
    locked = [name for name in names if frozen and re.fullmatch(frozen, name)]
    if frozen and not locked:
        return (
            f'config key optim.frozen = {frozen!r} matches no param (patterns match the whole path, '
            f"e.g. 'vision/.*'; top-level names: {', '.join(sorted({n.split('/')[0] for n in names}))}); "
            "fix the pattern or set it to ''."
        )
    if frozen and len(locked) == len(names):
        return f'config key optim.frozen = {frozen!r} locks every param, so nothing would train; narrow the pattern.'
    trained = [name for name in names if name not in set(locked)]
    pairs = group.get('lr_multipliers', ())
    if not isinstance(pairs, (tuple, list)):
        return f'config key optim.lr_multipliers must be a tuple of (regex, multiplier) pairs, got {pairs!r}.'
    for entry in pairs:
        if not (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], (int, float))
            and not isinstance(entry[1], bool)
        ):
            return (
                "config key optim.lr_multipliers needs (regex, multiplier) pairs, e.g. (('text/.*', 0.1),), "
                f'got {entry!r}.'
            )
        pattern, multiplier = entry
        try:
            re.compile(pattern)
        except re.error as error:
            return f'config key optim.lr_multipliers pattern {pattern!r} is not a valid regex ({error}).'
        if not multiplier > 0:
            return (
                f'config key optim.lr_multipliers gives {pattern!r} multiplier {multiplier}; it must be > 0 '
                '(lock params with optim.frozen instead: no optimizer state is kept for them).'
            )
        if not any(re.fullmatch(pattern, name) for name in trained):
            return (
                f'config key optim.lr_multipliers pattern {pattern!r} matches no trained param (patterns match the '
                "whole path, e.g. 'text/.*'; params locked by optim.frozen do not count); fix or drop it."
            )
    return None
