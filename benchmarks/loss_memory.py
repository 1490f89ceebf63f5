"""Prints the contrastive loss's compiled memory per device, dense vs chunked (asserts nothing).

    python benchmarks/loss_memory.py [--batches 4096 16384 65536] [--embed-dim 256] [--devices 8]
                                     [--comm ring|all_gather] [--regulators srcl,cosmo] [--block-size N]

One JSON object per line, one per (form, impl, batch), with keys `form`, `impl`, `batch`, `devices`,
`embed_dim`, `temp_mib_per_device`: the temporary buffers of the compiled value-and-grad (w.r.t. both
embedding matrices, the logit scale and, for sigmoid, the bias), from XLA's memory analysis of the
program each device runs. Nothing is executed, only compiled, on `--devices` fake CPU devices (the
batch split over a data=devices mesh), so B = 65,536 fits a laptop. `--comm` / `--regulators` /
`--block-size` change what the chunked (and, for regulators, dense) loss computes; a line then also
names them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 1 << 20
FORMS = ('softmax', 'sigmoid')
IMPLS = ('dense', 'chunked')


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batches', type=int, nargs='+', default=[4096, 16384, 65536])
    parser.add_argument('--embed-dim', type=int, default=256)
    parser.add_argument('--devices', type=int, default=8)
    parser.add_argument('--forms', nargs='+', default=list(FORMS), choices=FORMS)
    parser.add_argument('--impls', nargs='+', default=list(IMPLS), choices=IMPLS)
    parser.add_argument('--comm', default='ring', choices=('ring', 'all_gather'))
    parser.add_argument('--regulators', default='', help="comma-separated subset of 'srcl,cosmo' (default none)")
    parser.add_argument('--block-size', type=int, default=0, help='chunked: columns per tile (default: automatic)')
    return parser.parse_args()


def _chain(names: tuple[str, ...], form: str, batch: int):
    from vlp_jax.objectives.regulators import (
        Cosmo,
        CosmoSettings,
        RegulatorChain,
        RegulatorContext,
        Srcl,
        SrclSettings,
    )

    context = RegulatorContext(
        batch_size=batch, total_steps=1000, steps_per_epoch=100, loss_form=form, model_kind='dual'
    )
    regulators = []
    if 'srcl' in names:
        settings = SrclSettings(1.0, 0.0, 0, 1000, 'linear', tau_w=1.0, w_min=0.2)
        regulators.append(Srcl(settings, context))
    if 'cosmo' in names:
        regulators.append(Cosmo(CosmoSettings(high=0.8, low=0.5, eps=0.5, smoothing_start_step=0), context))
    return RegulatorChain(regulators)


def temp_mib(form: str, impl: str, batch: int, embed_dim: int, mesh, args) -> float:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from vlp_jax.objectives.chunked import chunked_contrastive_loss
    from vlp_jax.objectives.contrastive import contrastive_loss
    from vlp_jax.objectives.frozen import image_text_cosines
    from vlp_jax.objectives.regulators import DISCRIMINATOR, REFERENCE
    from vlp_jax.parallel import BATCH_AXES

    names = tuple(name for name in args.regulators.split(',') if name)
    chain = _chain(names, form, batch)
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    whole = NamedSharding(mesh, PartitionSpec())
    embeddings = jax.ShapeDtypeStruct((batch, embed_dim), jnp.float32, sharding=rows)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=whole)
    bias = jnp.float32(-10.0)
    step = jnp.int32(1)

    def loss(image, text, scale, bias, ref_image, ref_text):
        options = dict(form=form, sigmoid_bias=bias if form == 'sigmoid' else None)
        frozen = (ref_image, ref_text)
        if impl == 'chunked':
            answers = {REFERENCE: frozen, DISCRIMINATOR: frozen}
            return chunked_contrastive_loss(
                image,
                text,
                scale,
                regulators=chain,
                step=step,
                answers=answers,
                comm=args.comm,
                block_size=args.block_size or None,
                **options,
            )[0]
        cosines = image_text_cosines(*frozen)
        (i2t, t2i), _ = chain.dense(image_text_cosines(image, text), {REFERENCE: cosines, DISCRIMINATOR: cosines}, step)
        return contrastive_loss(image, text, scale, i2t=i2t, t2i=t2i, **options)[0]

    argnums = (0, 1, 2, 3) if form == 'sigmoid' else (0, 1, 2)
    step_fn = jax.jit(jax.value_and_grad(loss, argnums=argnums))
    with jax.set_mesh(mesh):
        compiled = step_fn.lower(embeddings, embeddings, scalar, bias, embeddings, embeddings).compile()
    return compiled.memory_analysis().temp_size_in_bytes / MIB


def main() -> None:
    args = _parse()
    flag = f'--xla_force_host_platform_device_count={args.devices}'
    if flag not in os.environ.get('XLA_FLAGS', ''):  # before jax is imported
        os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flag}'.strip()
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')

    import jax

    from vlp_jax.parallel import make_mesh

    assert jax.device_count() >= args.devices, f'need {args.devices} devices, have {jax.device_count()}'
    mesh = make_mesh({'data': args.devices, 'fsdp': 1, 'model': 1}, jax.devices()[: args.devices])
    for form in args.forms:
        for impl in args.impls:
            for batch in args.batches:
                row = {
                    'form': form,
                    'impl': impl,
                    'batch': batch,
                    'devices': args.devices,
                    'embed_dim': args.embed_dim,
                    'temp_mib_per_device': round(temp_mib(form, impl, batch, args.embed_dim, mesh, args), 1),
                }
                if impl == 'chunked' and args.comm != 'ring':
                    row['comm'] = args.comm
                if impl == 'chunked' and args.block_size:
                    row['block_size'] = args.block_size
                if args.regulators:
                    row['regulators'] = args.regulators
                print(json.dumps(row), flush=True)


if __name__ == '__main__':
    main()
