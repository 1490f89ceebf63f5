"""Checkpointing: one orbax CheckpointManager per workdir, resume, frozen reference params.

A step directory `<dir>/<step>/` holds two orbax items: 'state' (the train-state
pytree, StandardSave) and 'extra' (a small JSON dict: pipeline position, config
snapshot, ...). orbax writes each step into a '<step>.orbax-checkpoint-tmp-*'
directory and renames it on commit, so a killed save never looks complete; the
step finder only matches committed '<step>' names.

A checkpoint that fails to restore is moved into '<dir>/corrupt/' (never deleted)
and the previous one is tried, so a crash in the middle of a write costs at most
one checkpoint interval.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vlp_jax.models.param_paths import path_key
from vlp_jax.paths import as_path

PyTree = Any

STATE_ITEM = 'state'
EXTRA_ITEM = 'extra'
PARAMS_KEY = 'params'
CORRUPT_SUBDIR = 'corrupt'
CHECKPOINTS_SUBDIR = 'checkpoints'


class CheckpointError(Exception):
    """A checkpoint problem the user can fix (missing path, wrong model, all corrupt)."""


class _CorruptCheckpoint(Exception):
    """Internal: this step directory exists but cannot be read."""


EMPTY_DICT = ('{}',)  # the "shape" of an empty dict subtree (e.g. the random sampler's state)


def _is_empty_dict(node: Any) -> bool:
    return type(node) is dict and not node


def _flat_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """'a/b/0/c' -> shape, for live/abstract trees and orbax metadata trees alike.

    NamedTuples flatten by field name and are stored as dicts by field name, tuples
    and lists by index, so both sides produce the same key paths. An empty dict is
    stored as one and counts as an entry: orbax refuses a target that lacks it (or has
    it where the checkpoint does not), which must read as a mismatch, not as corruption.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_empty_dict)
    return {
        path_key(path): EMPTY_DICT if _is_empty_dict(leaf) else tuple(getattr(leaf, 'shape', np.shape(leaf)))
        for path, leaf in flat
    }


def _what(shape: tuple) -> str:
    return 'an empty dict' if shape == EMPTY_DICT else f'shape {shape}'


def _first_mismatch(stored: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
    """One sentence naming the first key whose presence or shape differs, or None."""
    for key in sorted(set(stored) | set(wanted)):
        if key not in stored:
            return f"key '{key}' ({_what(wanted[key])}) is not in the checkpoint"
        if key not in wanted:
            return f"the checkpoint has key '{key}' ({_what(stored[key])}) that the model does not"
        if tuple(stored[key]) != tuple(wanted[key]):
            return f"key '{key}' has shape {tuple(stored[key])} in the checkpoint but {tuple(wanted[key])} in the model"
    return None


def _read_state_metadata(step_dir: epath.Path) -> PyTree:
    """The stored 'state' tree of ArrayMetadata (reads only the small _METADATA file)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(step_dir / STATE_ITEM).tree
    finally:
        handler.close()


def _warn(message: str) -> None:
    logging.warning(message)
    print(f'WARNING: {message}', file=sys.stderr, flush=True)


class Checkpointer:
    """orbax CheckpointManager for one workdir: keep-last-K, async save, atomic, corrupt-checkpoint fallback."""

    def __init__(self, directory: str | os.PathLike, keep: int, async_save: bool = True):
        assert keep >= 1, keep
        self.directory = as_path(directory)
        self._keep = keep
        self._async = async_save
        self._mngr: ocp.CheckpointManager | None = None  # created lazily: see _manager

    def _manager(self, create: bool) -> ocp.CheckpointManager | None:
        """The manager, built only once the directory exists (or on first save).

        Building it earlier would create the directory, and a run that fails config
        validation must leave its workdir untouched.
        """
        if self._mngr is None:
            if not create and not self.directory.is_dir():
                return None
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._keep,
                create=True,
                enable_async_checkpointing=self._async,
                # Leftover tmp dirs are left alone: another job (an evaluator) may be
                # reading this directory while the trainer is mid-save.
                cleanup_tmp_directories=False,
            )
            self._mngr = ocp.CheckpointManager(self.directory, options=options)
        return self._mngr

    def save(self, step: int, state: PyTree, extra: dict) -> None:
        """Starts saving `state` and `extra` at `step`; an existing step is skipped, never overwritten."""
        mngr = self._manager(create=True)
        if step in mngr.all_steps():
            logging.info('Checkpoint for step %d already exists in %s; not saving again.', step, self.directory)
            return
        mngr.save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    EXTRA_ITEM: ocp.args.JsonSave(extra),
                }
            ),
            force=True,
        )

    def latest_step(self) -> int | None:
        mngr = self._manager(create=False)
        return None if mngr is None else mngr.latest_step()

    def _restore_step(self, mngr: ocp.CheckpointManager, step: int, abstract_state: PyTree) -> tuple[int, PyTree, dict]:
        """Restores one step; _CorruptCheckpoint if unreadable, CheckpointError if it is another model's."""
        step_dir = self.directory / str(step)
        try:
            stored = _flat_shapes(_read_state_metadata(step_dir))
        except Exception as e:  # any read/parse failure means the files are damaged
            raise _CorruptCheckpoint(f'{type(e).__name__}: {e}') from e
        # A shape/structure mismatch is a config problem, not corruption: moving the
        # checkpoints aside would destroy a good run, so stop and tell the user.
        mismatch = _first_mismatch(stored, _flat_shapes(abstract_state))
        if mismatch:
            raise CheckpointError(
                f'Checkpoint {step_dir} does not match the model being trained: {mismatch}; '
                'use the config that wrote it or a fresh --workdir.'
            )
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                        EXTRA_ITEM: ocp.args.JsonRestore(),
                    }
                ),
            )
        except Exception as e:  # truncated/garbage/missing files surface as many error types
            raise _CorruptCheckpoint(f'{type(e).__name__}: {e}') from e
        return step, restored[STATE_ITEM], dict(restored[EXTRA_ITEM])

    def _move_aside(self, step: int) -> epath.Path:
        """Renames '<dir>/<step>' to '<dir>/corrupt/<step>[.N]' so the step number can be saved again."""
        src = self.directory / str(step)
        dest = self.directory / CORRUPT_SUBDIR / str(step)
        n = 0
        while dest.exists():
            n += 1
            dest = self.directory / CORRUPT_SUBDIR / f'{step}.{n}'
        if jax.process_index() == 0:
            dest.parent.mkdir(exist_ok=True)
            src.rename(dest)
        ocp.multihost.sync_global_processes(f'vlp_jax_move_aside_{step}_{time.time_ns()}')
        return dest

    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[int, PyTree, dict] | None:
        """(step, state, extra) restored into `abstract_state`'s shardings; None if there is no checkpoint.

        With step None the newest usable checkpoint wins; damaged ones are moved aside.
        """
        mngr = self._manager(create=False)
        if mngr is None:
            if step is not None:
                raise CheckpointError(f'No checkpoint directory at {self.directory}; check --workdir.')
            return None
        mngr.wait_until_finished()  # a pending async save of ours must be on disk first
        mngr.reload()
        steps = sorted(mngr.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f'No checkpoint for step {step} in {self.directory} (available: {sorted(steps)}).'
                )
            try:
                return self._restore_step(mngr, step, abstract_state)
            except _CorruptCheckpoint as e:
                raise CheckpointError(
                    f'Checkpoint {self.directory / str(step)} is damaged and cannot be restored ({e}); '
                    'restore another step.'
                ) from e
        if not steps:
            return None
        for s in steps:
            try:
                return self._restore_step(mngr, s, abstract_state)
            except _CorruptCheckpoint as e:
                bad = self.directory / str(s)
                dest = self._move_aside(s)
                mngr.reload()  # forget the moved step so latest_step/save see the directory as it is
                reason = str(e).splitlines()[0][:200] if str(e) else ''
                _warn(
                    f'Checkpoint {bad} could not be restored ({reason}); '
                    f'moved it to {dest} and trying the previous one.'
                )
        raise CheckpointError(
            f'No usable checkpoint in {self.directory}: all {len(steps)} failed to restore and were moved to '
            f'{self.directory / CORRUPT_SUBDIR}; restore a backup or start with a fresh --workdir.'
        )

    def wait(self) -> None:
        """Blocks until every started save is committed (renamed from its tmp dir)."""
        if self._mngr is not None:
            self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's background threads."""
        if self._mngr is not None:
            self._mngr.wait_until_finished()
            self._mngr.close()
            self._mngr = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _committed_steps(directory: epath.Path) -> list[int]:
    """Committed step numbers under a checkpoints/ dir (tmp and corrupt/ dirs do not match)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def resolve_step_dir(path: epath.Path) -> epath.Path:
    """A step dir from a step dir, a checkpoints/ dir (its latest step) or a workdir."""
    if (path / STATE_ITEM).is_dir():
        return path
    for candidate in (path, path / CHECKPOINTS_SUBDIR):
        steps = _committed_steps(candidate)
        if steps:
            return candidate / str(steps[-1])
    raise CheckpointError(
        f'{path} is not a vlp_jax checkpoint (no step directory with a "{STATE_ITEM}" item); '
        'pass a workdir, its checkpoints/ directory or one step directory.'
    )


def stored_param_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape of every param in a checkpoint, from its metadata (no arrays are read)."""
    step_dir = resolve_step_dir(as_path(path))
    try:
        stored_tree = _read_state_metadata(step_dir)
    except Exception as e:
        raise CheckpointError(f'Cannot read checkpoint metadata in {step_dir} ({type(e).__name__}).') from e
    if not isinstance(stored_tree, dict) or PARAMS_KEY not in stored_tree:
        raise CheckpointError(f'Checkpoint {step_dir} has no "{PARAMS_KEY}" tree; it is not a vlp_jax train state.')
    return _flat_shapes(stored_tree[PARAMS_KEY])


def restore_params_from(path: str | os.PathLike, abstract_params: PyTree | None = None, subset: bool = False) -> PyTree:
    """Loads only the 'params' subtree of a vlp_jax checkpoint (frozen reference models).

    Without `abstract_params` the arrays are restored fully replicated on all devices.
    With `subset`, `abstract_params` may name only some of the stored params (a warm start).
    """
    path = as_path(path)
    if not path.exists():
        raise CheckpointError(f'Checkpoint path {path} does not exist; check the path to the reference model.')
    step_dir = resolve_step_dir(path)
    try:
        stored_tree = _read_state_metadata(step_dir)
    except Exception as e:
        raise CheckpointError(
            f'Cannot read checkpoint metadata in {step_dir} ({type(e).__name__}); '
            'it is damaged or not a vlp_jax checkpoint.'
        ) from e
    if not isinstance(stored_tree, dict) or PARAMS_KEY not in stored_tree:
        raise CheckpointError(f'Checkpoint {step_dir} has no "{PARAMS_KEY}" tree; it is not a vlp_jax train state.')
    stored_params = stored_tree[PARAMS_KEY]
    if abstract_params is None:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ('all',))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        abstract_params = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated), stored_params
        )
    else:
        stored_shapes = _flat_shapes(stored_params)
        if subset:
            stored_shapes = {key: shape for key, shape in stored_shapes.items() if key in _flat_shapes(abstract_params)}
        mismatch = _first_mismatch(stored_shapes, _flat_shapes(abstract_params))
        if mismatch:
            raise CheckpointError(f'Params in {step_dir} do not fit the requested model: {mismatch}.')
    item = {PARAMS_KEY: abstract_params}
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        restored = checkpointer.restore(
            step_dir / STATE_ITEM,
            args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            ),
        )
    except Exception as e:
        raise CheckpointError(
            f'Cannot restore params from {step_dir} ({type(e).__name__}: '
            f'{str(e).splitlines()[0][:200] if str(e) else ""}); the checkpoint is damaged.'
        ) from e
    finally:
        checkpointer.close()
    return restored[PARAMS_KEY]


def read_model_config(path: str | os.PathLike) -> dict | None:
    """The `model` config a checkpoint was written with (train saves it in the 'extra' item), or None
    when the path is not a readable checkpoint or predates it: a frozen model's own architecture."""
    try:
        step_dir = resolve_step_dir(as_path(path))
        checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
        try:
            extra = checkpointer.restore(step_dir / EXTRA_ITEM)
        finally:
            checkpointer.close()
    except Exception:  # a missing or damaged checkpoint is reported when its params are loaded
        return None
    model = extra.get('model') if isinstance(extra, dict) else None
    return dict(model) if isinstance(model, dict) else None
