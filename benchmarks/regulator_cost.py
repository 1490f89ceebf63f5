"""Prints what each regulator costs per train step, against plain InfoNCE (asserts nothing).

    python benchmarks/regulator_cost.py [--repeats 20] [--config.key=value ...]

The full step is timed for each method, on the same model and fixed batch. Its overhead
is then split into the frozen reference's forward pass (both encoders on the batch) and
the regulator's own work on the [B, B] similarities (weights, targets, top-2), timing
each alone. Random weights stand in for the reference checkpoint, since cost does not
depend on the values.
"""

from __future__ import annotations

import argparse

from common import build, fixed_batch, load_config, seconds_per_call

METHODS = {
    'InfoNCE': 'configs/shapes_noisy.py',
    'SRCL': 'configs/shapes_srcl.py',
    'COSMO': 'configs/shapes_cosmo.py',
    'SRCL+COSMO': 'configs/shapes_srcl_cosmo.py',
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--repeats', type=int, default=20)
    args, rest = parser.parse_known_args()

    import jax
    import jax.numpy as jnp

    from vlp_jax import setup as setup_lib
    from vlp_jax.checks import regulator_context
    from vlp_jax.models.vlp import VLPModel
    from vlp_jax.objectives.frozen import shared_roles
    from vlp_jax.objectives.regulators import RegulatorChain

    base = load_config(METHODS['InfoNCE'], rest)
    _, state = build(base)
    frozen_params = jax.tree.map(jnp.copy, state['params'])
    holder = {'state': state}
    rows = []
    for method, path in METHODS.items():
        config = load_config(path, rest)
        run_setup = setup_lib.build(config)
        model, batch = run_setup.model, fixed_batch(config, run_setup.mesh)
        roles = run_setup.objective.frozen_roles
        frozen = {role: frozen_params for role in roles}
        train_step = run_setup.train_step()

        def one_step():
            holder['state'], metrics, _ = train_step(holder['state'], batch, frozen)
            return metrics

        step = seconds_per_call(one_step, args.repeats)
        references = set(shared_roles(run_setup.frozen_roles).values())  # distinct frozen forwards per step

        @jax.jit
        def reference_forward(params, images, ids, mask):
            image = model.apply({'params': params}, images, method=VLPModel.encode_images)
            text = model.apply({'params': params}, ids, mask, method=VLPModel.encode_texts)
            return image @ text.T

        forward = 0.0
        if references:
            forward = len(references) * seconds_per_call(
                lambda: reference_forward(frozen_params, batch['image'], batch['text_ids'], batch['text_mask']),
                args.repeats,
            )
        sims = reference_forward(frozen_params, batch['image'], batch['text_ids'], batch['text_mask'])
        chain = RegulatorChain.from_config(config, regulator_context(config, run_setup.derived))
        regulate = jax.jit(lambda s: chain.dense(s, {role: s for role in roles}, jnp.int32(100)))
        own = seconds_per_call(lambda: regulate(sims), args.repeats) if chain.active else 0.0
        rows.append((method, step, forward, own))

    plain = rows[0][1]
    print(
        f'batch {base.batch_size}, {jax.device_count()} x {jax.devices()[0].platform}, model of configs/shapes_tiny.py'
    )
    print(f'{"method":<12}{"step ms":>9}{"vs InfoNCE":>12}{"ref fwd ms":>12}{"regulator ms":>14}{"reg % step":>12}')
    for method, step, forward, own in rows:
        print(
            f'{method:<12}{1000 * step:>9.1f}{100 * (step / plain - 1):>11.1f}%{1000 * forward:>12.1f}'
            f'{1000 * own:>14.2f}{100 * own / step:>11.2f}%'
        )


if __name__ == '__main__':
    main()
