"""The jitted functions a run executes: the generic train step and the two encoders.

One `jax.jit` per function over the mesh with explicit in/out shardings; the state
is donated. The step knows no particular loss: it asks an Objective (objectives/base.py).
Nothing here syncs with the host: metrics come back as device scalars and are fetched
by the loop every `log_every` steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vlp_jax import parallel
from vlp_jax.data import batch as batch_spec
from vlp_jax.models.vlp import VLPModel
from vlp_jax.objectives.base import FEEDBACK, Objective
from vlp_jax.probes import GroundTruthProbe, false_negative_metrics

# metrics[SKIPPED] = 1 when the step's update was skipped (non-finite loss or gradient; see GUARDS).
SKIPPED = 'train/skipped'
# How the step skips a non-finite update (`make_train_step(guard=...)`):
# - 'cond' (what runs use): decide from the loss and the gradient norm BEFORE the update, and run the optimizer
#   update and `after_update` inside `jax.lax.cond`, so a finite step pays nothing but two scalar checks and the
#   state is updated in place;
# - 'cond_params': 'cond', then also the updated params' global norm, a non-finite one keeping the old state
#   (a second `lax.cond`): what a strict check on the updated params costs;
# - 'select': the earlier guard, the updated state and the old one both kept, `jnp.where`d leaf by leaf on
#   the loss, gradient and updated-params finiteness (it reads and writes the whole state once more);
# - 'off': no guard, a non-finite update is applied.
# The last three are the baselines of benchmarks/step_ab.py.
GUARDS = ('cond', 'cond_params', 'select', 'off')
# Per-step RNG uses: the step's key (folded by step) is split into these, one per use.
OBJECTIVE_RNG, NUM_RNG_USES = 0, 1


def step_rng(state_rng: jax.Array, step: jax.Array) -> jax.Array:
    """The key of step `step`: a pure function of the run's key and the step, so a resume reproduces it."""
    return jax.random.fold_in(jax.random.wrap_key_data(state_rng), step)


@dataclasses.dataclass
class TrainStep:
    """The jitted step: `step(state, batch, frozen) -> (state, metrics, feedback)`, compiled ahead of time at
    its first call; `lower` gives XLA's cost analysis without compiling, `executable` the compiled step."""

    batch_keys: tuple[str, ...]
    _compiled: Any
    _mesh: Mesh
    _frozen_roles: tuple[str, ...]
    _executable: Any = None

    def __call__(self, state, batch: Mapping[str, jax.Array], frozen: Mapping[str, Any] | None = None):
        frozen = dict(frozen or {})
        assert set(frozen) == set(self._frozen_roles), f'the step needs frozen models {self._frozen_roles}'
        args = (state, batch_spec.select(batch, self.batch_keys), frozen)
        with jax.set_mesh(self._mesh):
            if self._executable is None:
                self._executable = self._compiled.lower(*args).compile()
            return self._executable(*args)

    def lower(self, state, batch: Mapping[str, Any], frozen: Mapping[str, Any] | None = None):
        """The step lowered for (possibly abstract) arguments: XLA's cost analysis without compiling."""
        with jax.set_mesh(self._mesh):
            return self._compiled.lower(state, batch_spec.select(batch, self.batch_keys), dict(frozen or {}))

    def executable(self):
        """The compiled step once it has run (benchmarks read its memory analysis), else None."""
        return self._executable


def make_train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    rules,
    state_shardings: Any,
    frozen_shardings: Mapping[str, Any] | None = None,
    probe: GroundTruthProbe | None = None,
    keep_feedback: bool = False,
    lock: Callable[[Any], Any] = lambda params: params,
    guard: str = 'cond',
) -> TrainStep:
    """step(state, batch, frozen) -> (state, metrics, feedback).

    `batch` holds exactly `objective.batch_keys` plus the probe's keys; `frozen` is
    {role: params} for `objective.frozen_roles`, in `frozen_shardings` (a tree of shardings or of
    ShapeDtypeStructs carrying them; default: like the trained params). `feedback` is the
    objective's outputs[FEEDBACK] (replicated) when `keep_feedback`, else None. `lock`
    (optim.stop_locked_gradients) is applied to the params inside the differentiated function, so
    locked params get exact zero gradients and no backward pass. `guard` (GUARDS) is how a non-finite
    update is skipped.
    """
    assert guard in GUARDS, guard
    keys = tuple(dict.fromkeys((*objective.batch_keys, *(probe.batch_keys if probe else ()))))

    def train_step(state: dict[str, Any], batch: dict[str, jax.Array], frozen: dict[str, Any]):
        step = state['step']
        (objective_rng,) = jax.random.split(step_rng(state['rng'], step), NUM_RNG_USES)
        with nn.logical_axis_rules(rules):
            args = (state['extra'], frozen, batch, objective_rng, step)
            (loss, (metrics, outputs)), grads = objective.value_and_grad(state['params'], *args, lock=lock)
        grad_norm = optax.global_norm(grads)
        old = (state['params'], state['opt_state'], state['extra'])

        def update(params, opt_state, extra):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params, extra = objective.after_update(optax.apply_updates(params, updates), extra, outputs, step)
            return params, opt_state, extra

        # A non-finite loss or gradient is skipped: the state keeps its old values (the step counter still
        # advances, so the batch is consumed), and the loop counts it (train.py, guards.py). A finite gradient
        # has finite Adam moments, so only an overflowing update (an absurd lr) could still make the params
        # non-finite, and the next step's loss then is: the run stops after `nonfinite_patience` such steps.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if guard == 'off':
            params, opt_state, extra = update(*old)
        elif guard == 'select':
            params, opt_state, extra = update(*old)
            finite = finite & jnp.isfinite(optax.global_norm(params))
            params, opt_state, extra = jax.tree.map(
                lambda n, o: jnp.where(finite, n, o), (params, opt_state, extra), old
            )
        else:

            def checked_update(*state_parts):
                new = update(*state_parts)
                params_finite = jnp.isfinite(optax.global_norm(new[0]))
                return jax.lax.cond(params_finite, lambda: new, lambda: state_parts), params_finite

            if guard == 'cond':
                params, opt_state, extra = jax.lax.cond(finite, update, lambda *parts: parts, *old)
            else:
                (params, opt_state, extra), finite = jax.lax.cond(
                    finite, checked_update, lambda *parts: (parts, jnp.bool_(False)), *old
                )
        metrics = {
            'train/loss': loss,
            'train/lr': schedule(step),
            'train/grad_norm': grad_norm,
            SKIPPED: (~finite).astype(jnp.int32),
            **metrics,
        }
        if probe is not None:
            false_negatives = probe.false_negatives(batch)
            metrics.update(false_negative_metrics(false_negatives))
            metrics.update(objective.ground_truth_metrics(false_negatives, outputs))
        new_state = {**state, 'params': params, 'opt_state': opt_state, 'extra': extra, 'step': step + 1}
        return new_state, metrics, (outputs[FEEDBACK] if keep_feedback else None)

    frozen_shardings = {
        role: jax.tree.map(
            lambda x: getattr(x, 'sharding', x), (frozen_shardings or {}).get(role, state_shardings['params'])
        )
        for role in objective.frozen_roles
    }
    batch_shardings = {key: parallel.batch_sharding(mesh, batch_spec.ndim(key)) for key in keys}
    replicated = parallel.replicated(mesh)
    compiled = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings, frozen_shardings),
        out_shardings=(state_shardings, replicated, replicated),
        donate_argnums=(0,),
    )

    return TrainStep(keys, compiled, mesh, tuple(objective.frozen_roles))


def make_encoders(model: VLPModel, mesh: Mesh, rules, params_shardings: Any) -> tuple[Callable, Callable]:
    """(encode_images(params, images), encode_texts(params, ids, mask)) returning normalised embeddings.

    Inputs are batch-sharded; outputs are replicated, so every process holds the whole
    result and can read it (a batch-sharded output spans other processes' devices).
    """
    out = parallel.replicated(mesh)

    def images_fn(params, images):
        with nn.logical_axis_rules(rules):
            return model.apply({'params': params}, images, method=VLPModel.encode_images)

    def texts_fn(params, ids, mask):
        with nn.logical_axis_rules(rules):
            return model.apply({'params': params}, ids, mask, method=VLPModel.encode_texts)

    images_jit = jax.jit(
        images_fn, in_shardings=(params_shardings, parallel.batch_sharding(mesh, 4)), out_shardings=out
    )
    texts_jit = jax.jit(
        texts_fn,
        in_shardings=(params_shardings, parallel.batch_sharding(mesh, 2), parallel.batch_sharding(mesh, 2)),
        out_shardings=out,
    )

    def with_mesh(fn):
        def call(*args):
            with jax.set_mesh(mesh):
                return fn(*args)

        return call

    return with_mesh(images_jit), with_mesh(texts_jit)


def scalar_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """The one host sync per log step."""
    return {key: float(value) for key, value in jax.device_get(metrics).items()}
