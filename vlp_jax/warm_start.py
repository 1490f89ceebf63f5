"""Warm start: a new run starts from another vlp_jax run's params (pretrained -> fine-tuned).

`model.init_checkpoint` names any vlp_jax checkpoint (a workdir, its checkpoints/ or a step
dir). Each param of the new model is restored from it when the checkpoint holds it:

- under the same path with the same shape: copied;
- the image tower's position table ('vision/pos_embedding') of another square patch grid (a fine-tuning
  resolution change, 256 -> 384 px in ALBEF): interpolated as ALBEF's `interpolate_pos_embed` does
  (models/pos_embed.py); the text position table of another length: its common rows copied, the rest fresh;
- under another path the model names (`sources`, a model's own mapping, models/vlp.py `checkpoint_sources`)
  with the same shape, when the checkpoint lacks the param's own path: a bi-image fusion layer of NLVR2 is
  initialised from the single-image layer it doubles (models/bi_fusion.py); a decoder's layers from the
  encoder layers it continues (models/decoder_config.py `warm_start_aliases`: a 'separate' decoder from the fusion
  layers, ALBEF's VQA init; a 'shared' decoder's own self-attention from the layer it runs). The summary
  names each decoder layer and where it came from.

Everything else keeps its fresh initialisation: new task heads, fusion layers a dual encoder lacks. A task
head whose shape differs (another number of classes) is new as well; any other param whose shape differs
means the checkpoint is another architecture, and that is one WarmStartError naming the param, as is a
missing path or a checkpoint that shares nothing. `summary` lists what was restored, what is new and what
of the checkpoint is not used, as the Hugging Face importer's summary does. It applies to a new run only:
a resumed run restores its own state.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.checkpointing import CheckpointError, restore_params_from, stored_param_shapes
from vlp_jax.models import pos_embed
from vlp_jax.models.param_paths import path_key

PyTree = dict
VISION_POSITIONS = 'vision/pos_embedding'
TEXT_POSITIONS = 'text/pos_embedding'
# Task heads (models/vlp.py): re-initialised, not refused, when the checkpoint's has another shape.
HEADS = ('cls_head/', 'ta_head/')
DECODER = 'decoder/'  # the image-grounded decoder (models/decoder.py), re-mapped from encoder layers
GROUPS_SHOWN = 8  # module groups named in a summary before '... and N more'


class WarmStartError(Exception):
    """model.init_checkpoint cannot be used; the message names the key and what to do."""


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What a warm start restores: arrays by param path (in their target shardings) and what it did."""

    path: str
    arrays: dict[str, jax.Array | Callable[[jax.Array], jax.Array]]  # a callable fits a resized table (warm_start)
    restored: tuple[str, ...]  # param paths of the new model taken from the checkpoint
    fresh: tuple[str, ...]  # param paths left at their fresh init
    unused: tuple[str, ...]  # checkpoint params no param of the new model took
    notes: tuple[str, ...]  # interpolations, re-mapped layers, in words

    @property
    def total(self) -> int:
        return len(self.restored) + len(self.fresh)

    def summary(self) -> str:
        text = f'initialised {len(self.restored)} of {self.total} param arrays from {self.path}'
        text += f': restored {groups(self.restored)}'
        if self.fresh:
            text += f'; new: {groups(self.fresh)}'
        if self.unused:
            text += f'; not used from the checkpoint: {groups(self.unused)}'
        for note in self.notes:
            text += f'; {note}'
        return text


def group_of(key: str) -> str:
    """The module a param belongs to, for summaries: its first path part ('text/fusion' apart)."""
    parts = key.split('/')
    return '/'.join(parts[:2]) if parts[:2] == ['text', 'fusion'] else parts[0]


def groups(keys: tuple[str, ...]) -> str:
    """'vision (21), text (18), cls_head (4)': the modules of `keys` with their array counts, largest first."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[group_of(key)] = counts.get(group_of(key), 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])  # the largest modules (the towers) first
    shown = [f'{name} ({count})' for name, count in ordered[:GROUPS_SHOWN]]
    more = len(counts) - GROUPS_SHOWN
    return ', '.join(shown) + (f' and {more} more' if more > 0 else '') if shown else 'nothing'


def _error(path: str, message: str) -> WarmStartError:
    return WarmStartError(f'config key model.init_checkpoint = {path!r}: {message}')


def _resizable(key: str, stored: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """A position table the warm start can fit to the new shape (same width, another grid or length)."""
    if len(stored) != 2 or len(wanted) != 2 or stored[1] != wanted[1]:
        return False
    if key == VISION_POSITIONS:
        return pos_embed.square_grid(stored[0]) is not None and pos_embed.square_grid(wanted[0]) is not None
    return key == TEXT_POSITIONS


def _fit(key: str, table: np.ndarray, wanted: tuple[int, ...], fresh: np.ndarray) -> np.ndarray:
    """A stored position table fitted to `wanted`: the image grid interpolated, the text rows cut or extended
    (rows beyond the checkpoint's keep their fresh init)."""
    if key == VISION_POSITIONS:
        return pos_embed.interpolate_pos_embedding(table, pos_embed.square_grid(wanted[0])).astype(table.dtype)
    rows = min(table.shape[0], wanted[0])
    return np.concatenate([table[:rows], fresh[rows:]]).astype(table.dtype)


def _note(key: str, stored: tuple[int, ...], wanted: tuple[int, ...]) -> str:
    if key == VISION_POSITIONS:
        old, new = pos_embed.square_grid(stored[0]), pos_embed.square_grid(wanted[0])
        return f'position embeddings interpolated from {old}x{old} to {new}x{new} (bicubic)'
    return f'text position table: {min(stored[0], wanted[0])} of {wanted[0]} rows from the checkpoint'


def load_warm_start(
    path: str,
    abstract_params: PyTree,
    sources: Callable[[str], tuple[str, ...]] = lambda key: (),
) -> WarmStart:
    """The warm start of a model whose params are `abstract_params` (ShapeDtypeStructs carrying their
    shardings) from the checkpoint at `path`; `sources(key)` names other checkpoint paths a param may be
    initialised from (tried in order when its own path is absent)."""
    try:
        stored = {key: tuple(shape) for key, shape in stored_param_shapes(path).items()}
    except CheckpointError as error:
        raise _error(path, str(error)) from error
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    wanted = {path_key(p): leaf for p, leaf in flat}
    plan: dict[str, str] = {}  # target key -> checkpoint key
    fitted: set[str] = set()  # targets whose stored table is resized
    notes: list[str] = []
    mismatched: list[str] = []  # params of another shape there (not a position table, not a task head)
    remapped: dict[str, str] = {}  # target key -> the other checkpoint key it takes
    for key, leaf in wanted.items():
        shape = tuple(leaf.shape)
        if key in stored:
            if stored[key] == shape:
                plan[key] = key
            elif _resizable(key, stored[key], shape):
                plan[key] = key
                fitted.add(key)
                notes.append(_note(key, stored[key], shape))
            elif not key.startswith(HEADS):
                mismatched.append(key)
            continue
        for source in sources(key):
            if stored.get(source) == shape:
                plan[key] = remapped[key] = source
                break
    if not any(len(wanted[key].shape) > 0 for key in plan):  # a shared temperature alone is no warm start
        raise _error(
            path, 'shares no param (same path and shape) with this model; name a checkpoint of the same towers.'
        )
    if mismatched:
        key = mismatched[0]
        raise _error(
            path,
            f"param '{key}' has shape {stored[key]} there but {tuple(wanted[key].shape)} in this model: the "
            'checkpoint is another architecture; name a checkpoint of these towers or change the model.* keys.',
        )
    notes.extend(_remap_notes(remapped))

    subtree: dict = {}
    for key, source in plan.items():
        leaf = wanted[key]
        if key in fitted:  # restored at its stored shape, replicated, then fitted on the host
            mesh = leaf.sharding.mesh
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            leaf = jax.ShapeDtypeStruct(stored[source], leaf.dtype, sharding=replicated)
        node = subtree
        *parents, last = source.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(last, leaf)
    try:
        restored = restore_params_from(path, subtree, subset=True)
    except CheckpointError as error:
        raise _error(path, str(error)) from error
    loaded = {path_key(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}
    arrays: dict[str, jax.Array | Callable[[jax.Array], jax.Array]] = {}
    taken: set[str] = set()
    for key, source in plan.items():
        if key in fitted:
            arrays[key] = functools.partial(_fitted, key, np.asarray(jax.device_get(loaded[source])))
        elif source in taken:  # a second param from the same array (NLVR2's pair): its own buffer, as the
            arrays[key] = jnp.copy(loaded[source])  # train step donates the state and one buffer can't go twice
        else:
            arrays[key] = loaded[source]
        taken.add(source)
    used = set(plan.values())
    return WarmStart(
        path=path,
        arrays=arrays,
        restored=tuple(key for key in wanted if key in plan),
        fresh=tuple(key for key in wanted if key not in plan),
        unused=tuple(key for key in stored if key not in used),
        notes=tuple(dict.fromkeys(notes)),
    )


def _module_pair(key: str, source: str) -> tuple[str, str]:
    """('decoder/block_0', 'text/fusion/block_0') of 'decoder/block_0/mlp/fc1/bias' <- 'text/fusion/block_0/mlp/
    fc1/bias': the decoder's module (its first two path parts) and the checkpoint's path it was taken from."""
    target = '/'.join(key.split('/')[:2])
    rest = key[len(target) :]
    return target, source[: len(source) - len(rest)] if rest and source.endswith(rest) else source


def _remap_notes(remapped: dict[str, str]) -> list[str]:
    """The summary's words for params taken from other checkpoint paths: NLVR2's pairs counted, the decoder's
    layers each named with the layer it came from."""
    notes = []
    pairs = [key for key in remapped if not key.startswith(DECODER)]
    if pairs:
        notes.append(f'{len(pairs)} arrays of the two-image fusion layers from the single-image layers they double')
    counts: dict[tuple[str, str], int] = {}
    for key, source in remapped.items():
        if key.startswith(DECODER):
            pair = _module_pair(key, source)
            counts[pair] = counts.get(pair, 0) + 1
    if counts:
        named = ', '.join(f'{target} <- {source} ({n})' for (target, source), n in counts.items())
        notes.append(f'{sum(counts.values())} decoder arrays from the layers it continues: {named}')
    return notes


def _fitted(key: str, table: np.ndarray, fresh: jax.Array) -> jax.Array:
    """A stored position table fitted to the fresh param `fresh` (its shape, its sharding, its rows where the
    checkpoint has none)."""
    host = np.asarray(jax.device_get(fresh))
    return jax.device_put(_fit(key, table, host.shape, host), fresh.sharding)


def warm_start(params: PyTree, arrays: dict[str, jax.Array | Callable[[jax.Array], jax.Array]]) -> PyTree:
    """`params` with every leaf named in `arrays` replaced (same sharding: they were restored into it); a
    callable entry (a resized position table) is given the fresh leaf."""

    def take(path, leaf):
        value = arrays.get(path_key(path), leaf)
        return value(leaf) if callable(value) else value

    return jax.tree_util.tree_map_with_path(take, params)
