"""Prints decoding speed (generated tokens/s) with and without the decoder's key/value cache (asserts nothing).

    python benchmarks/decode_cache.py [--config configs/blip.py:tiny] [--tokens 25] [--batch 16] [--beam 1]
        [--repeats 5] [--config.key=value ...]

The model is the config's (freshly initialised: speed depends on the shapes only), its decoder reading a random
image's tokens. Both searches are vlp_jax/decoding.py's, jit-compiled, generating exactly `--tokens` tokens
(min_len = max_len, so no sequence ends early) after [BOS]: with the cache each step runs one position through
the decoder; without it each step re-runs the whole fixed-length buffer. After one warm-up (compilation) call
each, the two run round-robin `--repeats` times; tokens/s = batch * tokens / the median seconds per call.
One JSON line: device, shapes, tokens/s of each, the speed-up; and the same two loops without the LM head
(`layers_*`: the decoder layers alone, each step's hidden state fed back as the next input), which shows how
much of a cached step the tied 30,522-word head takes on a small model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import build, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/blip.py:tiny')
    parser.add_argument('--tokens', type=int, default=25)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--beam', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    args, overrides = parser.parse_known_args()

    import jax
    import numpy as np

    from vlp_jax.decoding import DecodeSettings, decode

    config = load_config(args.config, [f'--config.model.max_text_len={args.tokens + 1}', *overrides])
    run_setup, state = build(config)
    model, params = run_setup.model, state['params']
    size = config.model.image_size
    image = np.random.default_rng(0).normal(size=(args.batch, size, size, 3)).astype(np.float32)
    context = jax.jit(lambda p, x: model.apply({'params': p}, x, method='image_tokens'))(params, image)
    settings = DecodeSettings(max_len=args.tokens, min_len=args.tokens, beam=args.beam)
    calls = {
        name: (lambda c=cache: decode(model, params, context, None, settings, cache=c))
        for name, cache in (('cache', True), ('no_cache', False))
    }
    import jax.numpy as jnp

    width, length = config.model.text.width, args.tokens + 1

    def layers_loop(params, context, cache):
        def apply(*a, method):
            return model.apply({'params': params}, *a, method=method)

        x = jnp.zeros((args.batch, 1, width), jnp.float32)
        if cache:
            kv = apply(context, length, method='decoder_cache')

            def body(i, state):
                x, kv = state
                return apply(x, i, kv, None, method=lambda m, *a: m.decoder.step(*a, m._shared()))

            return jax.lax.fori_loop(0, args.tokens, body, (x, kv))[0]
        buffer = jnp.zeros((args.batch, length, width), jnp.float32)
        ones = jnp.ones((args.batch, length), jnp.int32)

        def body(i, buffer):
            out = apply(
                buffer,
                ones,
                context,
                None,
                params['text'] if model.config.decoder.layout == 'shared' else None,
                method=lambda m, *a: m.decoder(*a),
            )
            return jax.lax.dynamic_update_slice_in_dim(buffer, jax.lax.dynamic_slice_in_dim(out, i, 1, 1), i + 1, 1)

        return jax.lax.fori_loop(0, args.tokens, body, buffer)

    layers = {
        True: jax.jit(lambda p, c: layers_loop(p, c, True)),
        False: jax.jit(lambda p, c: layers_loop(p, c, False)),
    }
    calls['layers_cache'] = lambda: layers[True](params, context)
    calls['layers_no_cache'] = lambda: layers[False](params, context)
    times = {name: [] for name in calls}
    for fn in calls.values():
        jax.block_until_ready(fn())
    for _ in range(args.repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    speed = {name: args.batch * args.tokens / statistics.median(t) for name, t in times.items()}
    print(
        json.dumps(
            {
                'device': str(jax.devices()[0].device_kind),
                'config': args.config,
                'batch': args.batch,
                'tokens': args.tokens,
                'beam': args.beam,
                'text_layers': config.model.text.depth,
                'fusion_layers': config.model.text.fusion_layers,
                'width': config.model.text.width,
                'tokens_per_s_cache': round(speed['cache'], 1),
                'tokens_per_s_no_cache': round(speed['no_cache'], 1),
                'speedup': round(speed['cache'] / speed['no_cache'], 2),
                'layers_tokens_per_s_cache': round(speed['layers_cache'], 1),
                'layers_tokens_per_s_no_cache': round(speed['layers_no_cache'], 1),
                'layers_speedup': round(speed['layers_cache'] / speed['layers_no_cache'], 2),
            }
        )
    )


if __name__ == '__main__':
    main()
