"""Prints the fusion (ALBEF) train step's time beside the dual encoder's, and each loss term's share (asserts nothing).

    python benchmarks/fusion_step.py [--batch_size 128] [--repeats 10]
        [--dual_config configs/shapes_tiny.py] [--fusion_config configs/albef.py:tiny] [--config.key=value ...]

One JSON line per measurement: the device, each model's full jitted train step
(Setup.train_step(), state donated as in training) and the fusion step split into terms.
`--config.*` overrides apply to both configs; --batch_size sets both batch sizes (the
fusion config's queue is rounded up to a multiple of it). Both steps run on one fixed
random batch (benchmarks/common.py fixed_batch: no input pipeline, no TensorFlow), since
the cost depends on the shapes only.

Method (differences of nested losses): the fusion objective's own `loss` is jitted as
value_and_grad (forward + backward, no optimizer) on the same params, batch, rng and step,
keeping only part of its result, so XLA drops the rest as dead code:
  (t) towers forward + backward alone (a trivial loss on the embeddings),
  (a) the ITC term (towers + contrastive loss),          momentum model off,
  (b) ITC + ITM,                                         momentum model off,
  (c) ITC + ITM + MLM: the full loss,                    momentum model off,
  (d) the full loss with the momentum model (the config's own objective).
itc = a, itm = b - a, mlm = c - b, momentum = d - c (the EMA model's forward, ITC's
[B, B + queue] logits and the distillation targets), other = step - d (optimizer, grad
norm, EMA update, enqueue, temperature clamp, metrics). `towers_ms` (t) is the part of
itc that any loss would pay; `momentum_forward_ms` times the EMA model's forward alone
(towers + MLM logits on the masked captions, no gradient), so momentum - momentum_forward
is the queue and distillation. `shares` are fractions of the fusion step; a difference
can come out slightly negative when a term is within the noise. `gflops`: XLA's cost
analysis of each compiled variant (where the backend gives one), which checks that the
nested variants really grow term by term.

Timing: after one warm-up (compilation) call each, the variants run round-robin, one
call each per repeat, each blocked on (jax.block_until_ready); ms = the median per
variant. Round-robin keeps a change in machine load from landing on one variant only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import build, fixed_batch, load_config

TOWER_KEYS = ('image_size', 'max_text_len', 'embed_dim', 'dtype', 'vision', 'text')


def tower_differences(dual, fusion) -> dict[str, list]:
    """model keys where the dual config's towers differ from the fusion config's (text.fusion_layers aside)."""
    out = {}
    for key in TOWER_KEYS:
        a, b = dual.model[key], fusion.model[key]
        if hasattr(a, 'to_dict'):
            a, b = a.to_dict(), b.to_dict()
            a.pop('fusion_layers', None)
            b.pop('fusion_layers', None)
            out.update({f'{key}.{k}': [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
        elif a != b:
            out[key] = [a, b]
    return out


def median_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall ms per fn: one warm-up call each, then `repeats` rounds of one blocked call each."""
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: round(1000 * statistics.median(values), 2) for name, values in times.items()}


def gflops(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends have none
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get('flops')
    return round(flops / 1e9, 3) if flops and flops > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--dual_config', default='configs/shapes_tiny.py')
    parser.add_argument('--fusion_config', default='configs/albef.py:tiny')
    parser.add_argument('--batch_size', type=int, default=0, help="0: the configs' own (must agree)")
    parser.add_argument('--repeats', type=int, default=10)
    args, rest = parser.parse_known_args()

    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import linen as nn

    from vlp_jax import setup as setup_lib
    from vlp_jax.data import batch as batch_spec
    from vlp_jax.objectives.albef import split_rng
    from vlp_jax.objectives.matching import caption_pairs, mask_tokens, prediction_positions
    from vlp_jax.objectives.momentum import MOMENTUM_PARAMS

    overrides = list(rest) + ([f'--config.batch_size={args.batch_size}'] if args.batch_size else [])
    if args.batch_size:  # the queue must hold whole batches: round it up before validation
        from vlp_jax.config_files import load_config_file

        queue = load_config_file(args.fusion_config).loss.momentum.queue_size
        overrides.append(f'--config.loss.momentum.queue_size={-(-queue // args.batch_size) * args.batch_size}')
    dual_config = load_config(args.dual_config, [o for o in overrides if 'queue_size' not in o])
    fusion_config = load_config(args.fusion_config, overrides)
    assert fusion_config.model.kind == 'fusion' and dual_config.model.kind == 'dual', 'need a dual and a fusion config'
    assert dual_config.batch_size == fusion_config.batch_size, 'batch sizes differ: pass --batch_size'
    assert fusion_config.loss.momentum.enabled, 'the fusion config has no momentum model to time'

    device = jax.devices()[0]
    batch_size = fusion_config.batch_size
    differences = tower_differences(dual_config, fusion_config)
    emit = lambda row: print(json.dumps({'benchmark': 'fusion_step', **row}), flush=True)
    emit(
        {
            'platform': device.platform,
            'device_kind': device.device_kind,
            'device_count': jax.device_count(),
            'batch_size': batch_size,
            'repeats': args.repeats,
            'dual_config': args.dual_config,
            'fusion_config': args.fusion_config,
            'fusion_layers': fusion_config.model.text.fusion_layers,
            'queue_size': fusion_config.loss.momentum.queue_size,
            'mlm_max_predictions': fusion_config.loss.mlm.max_predictions,
            'same_towers': not differences,
            'tower_differences': differences,  # key: [dual, fusion]
        }
    )

    # The full train steps, each on its own state (donated as in training).
    fns, holders = {}, {}
    dual_setup, dual_state = build(dual_config)
    fusion_setup, fusion_state = build(fusion_config)
    count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
    params_count = {'dual': count(dual_state['params']), 'fusion': count(fusion_state['params'])}
    mesh, rules, model = fusion_setup.mesh, fusion_setup.rules, fusion_setup.model
    batch = batch_spec.select(fixed_batch(fusion_config, mesh), batch_spec.REQUIRED_KEYS)
    # Copies: the fusion step donates its state, the variants reuse these every call.
    params = jax.tree.map(jnp.copy, fusion_state['params'])
    extra = jax.tree.map(jnp.copy, fusion_state['extra'])
    for name, run_setup, state in (('dual', dual_setup, dual_state), ('fusion', fusion_setup, fusion_state)):
        step_fn, holders[name] = run_setup.train_step(), {'state': state}

        def one_step(step_fn=step_fn, holder=holders[name]):
            holder['state'], metrics, _ = step_fn(holder['state'], batch)
            return metrics

        fns[f'{name}_step'] = one_step

    # The loss variants, on the fusion objective with and without its momentum model.
    with_momentum = fusion_setup.objective
    off = ml_collections.ConfigDict(fusion_config.to_dict())
    off.loss.momentum.enabled = False
    off.loss.momentum.queue_size = 0
    without = setup_lib.build(off).objective
    weights = with_momentum.weights
    rng, step = jax.random.key(0), jnp.asarray(100, jnp.int32)  # step > 0: distillation's alpha is live

    def towers(p, ex, b, key, s):
        out = model.apply({'params': p}, *(b[k] for k in batch_spec.MODEL_INPUT_KEYS))
        return jnp.sum(out['image_embed'] * out['text_embed'])

    def itc(p, ex, b, key, s):
        return weights['itc'] * without.loss(p, ex, {}, b, key, s)[1]['train/itc']

    def itc_itm(p, ex, b, key, s):
        metrics = without.loss(p, ex, {}, b, key, s)[1]
        return weights['itc'] * metrics['train/itc'] + weights['itm'] * metrics['train/itm']

    def no_momentum(p, ex, b, key, s):
        return without.loss(p, ex, {}, b, key, s)[0]

    def full(p, ex, b, key, s):
        return with_momentum.loss(p, ex, {}, b, key, s)[0]

    def momentum_forward(p, ex, b, key, s):
        """The EMA model's towers + MLM logits on the step's masked captions (what `full` adds as forward)."""
        momentum_params = ex[MOMENTUM_PARAMS]
        ids, mask = b['text_ids'], b['text_mask']
        out_m = model.apply({'params': momentum_params}, *(b[k] for k in batch_spec.MODEL_INPUT_KEYS))
        objective = with_momentum
        masked_ids, selected = mask_tokens(
            split_rng(key)['mask'], ids, mask, objective.mask_ratio, objective.special, objective.max_predictions
        )
        pairs = caption_pairs(ids.shape[0])
        fused = objective._momentum_fused(momentum_params, masked_ids, mask, out_m, pairs)
        if objective.max_predictions:  # the word logits of the predicted positions only, as the loss
            positions, _ = prediction_positions(selected, objective.max_predictions)
            fused = jnp.take_along_axis(fused, positions[..., None], axis=1)
        logits = model.apply({'params': momentum_params}, fused, method='mlm_logits')
        return out_m['image_embed'], out_m['text_embed'], logits

    flops = {}
    inputs = (params, extra, batch, rng, step)
    variants = {'towers': towers, 'itc': itc, 'itc_itm': itc_itm, 'no_momentum': no_momentum, 'full_loss': full}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        jitted = {**{name: jax.value_and_grad(fn) for name, fn in variants.items()}, 'momentum': momentum_forward}
        for name, fn in jitted.items():
            compiled = jax.jit(fn).lower(*inputs).compile()
            flops[name] = gflops(compiled)
            fns[name] = lambda compiled=compiled: compiled(*inputs)
    ms = median_ms(fns, args.repeats)

    emit({'model': 'dual', 'config': args.dual_config, 'params': params_count['dual'], 'step_ms': ms['dual_step']})
    step_ms = ms['fusion_step']
    terms = {
        'itc': ms['itc'],
        'itm': ms['itc_itm'] - ms['itc'],
        'mlm': ms['no_momentum'] - ms['itc_itm'],
        'momentum': ms['full_loss'] - ms['no_momentum'],
        'other': step_ms - ms['full_loss'],
    }
    emit(
        {
            'model': 'fusion',
            'config': args.fusion_config,
            'params': params_count['fusion'],
            'step_ms': step_ms,
            'vs_dual': round(step_ms / ms['dual_step'], 2),
            **{f'{term}_ms': round(value, 2) for term, value in terms.items()},
            'towers_ms': ms['towers'],
            'momentum_forward_ms': ms['momentum'],
            'loss_grad_ms': ms['full_loss'],
            'shares': {term: round(value / step_ms, 3) for term, value in terms.items()},
            'gflops': flops,
        }
    )


if __name__ == '__main__':
    main()
