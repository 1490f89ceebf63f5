"""Passes 2 and 3 joined by `jax.custom_vjp`: the per-direction losses, differentiable without a [B, B] residual."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec

from vlp_jax.objectives.chunked.backward import _backward_body
from vlp_jax.objectives.chunked.forward import _forward_body
from vlp_jax.objectives.chunked.plan import _Plan


def _loss_parts(plan: _Plan, mesh) -> Callable:
    """parts(diff, consts) -> [loss_i2t, loss_t2i, consistency], differentiable in diff = {v, t, scale, bias}."""
    rows, whole = PartitionSpec(plan.axes), PartitionSpec()
    diff_specs = {'v': rows, 't': rows, 'scale': whole, 'bias': whole}
    const_specs = {'emb': rows, 'rows': rows, 'scalars': whole}
    forward = jax.shard_map(
        functools.partial(_forward_body, plan), mesh=mesh, in_specs=(diff_specs, const_specs), out_specs=(whole, rows)
    )
    backward = jax.shard_map(
        functools.partial(_backward_body, plan),
        mesh=mesh,
        in_specs=(diff_specs, const_specs, rows, whole),
        out_specs=diff_specs,
    )

    @jax.custom_vjp
    def parts(diff, consts):
        return forward(diff, consts)[0]

    def parts_fwd(diff, consts):
        out, residuals = forward(diff, consts)
        return out, (diff, consts, residuals)

    def parts_bwd(saved, cotangent):
        diff, consts, residuals = saved
        return backward(diff, consts, residuals, cotangent), None

    parts.defvjp(parts_fwd, parts_bwd)
    return parts
