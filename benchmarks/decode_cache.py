"""Prints decoding speed (generated tokens/s) with and without the decoder's key/value cache, and what each path
computes per generated token (asserts nothing).

    python benchmarks/decode_cache.py [--config configs/blip.py:tiny] [--tokens 20 30] [--batch 1 16]
        [--beam 1 3] [--rounds 7] [--config.key=value ...]

The model is the config's (freshly initialised: speed depends on the shapes only), its decoder reading random
images' tokens. Both searches are vlp_jax/decoding.py's `decode`, jit-compiled, generating exactly `tokens`
tokens (min_len = max_len, so no sequence ends early) after [BOS], for every combination of the listed token
counts, batch sizes and beam widths:

- `cache`: each step runs ONE position (the last token) through the decoder layers against the cached keys and
  values, the image's cross-attention keys/values projected once before the loop, then the LM head on that one
  position's hidden state;
- `no_cache`: each step re-runs the whole fixed-length buffer ([BOS] + `tokens` positions, causal, so the
  positions not yet written change nothing) through the embeddings and the decoder layers, the image's
  cross-attention keys/values included, then the same LM head on the one position it needs (what a user gets
  without a cache at static shapes; the head is not applied to the whole buffer);
- `head`: the loop of what both share, the LM head (dense, GELU, LayerNorm, the tied 30,522-word table) and the
  pick (greedy's argmax and log-probability, or beam search's per-beam top 2k), alone: no path can be faster.

After one warm-up (compilation) call each, the three run `--rounds` times in a rotating order (the machine is
shared: load that changes slowly cancels in the per-round ratios). One JSON line per combination: tokens/s
(batch * tokens / the median seconds of a call) of each, `speedup` = the median per-round ratio of the
no_cache to the cache time with its min and max, `bound` = the same for no_cache / head (the speed-up a cache
whose decoder layers cost nothing would give), both also by the process's CPU time (`cpu_time_*`: the work
done, which other jobs on a shared machine disturb less than the wall time), and XLA's FLOP count
(`cost_analysis`) of one step of each path per generated token (per sequence row: a beam is one row).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

from common import build, load_config


def step_flops(model, params, context, settings, rows: int, width: int) -> dict[str, float]:
    """XLA's FLOPs of one decoding step per row: cache, no_cache and head (jit of a step; a loop counts its body
    once, so the searches themselves cannot be counted this way); `prefill`: the cache's set-up (the image's
    cross-attention keys/values), once per sequence."""
    import jax
    import jax.numpy as jnp

    from vlp_jax.decoding import Stepper

    length = len(settings.prefix) + settings.max_len
    context = jnp.repeat(context, settings.beam, axis=0)
    seq = jnp.ones((rows, length), jnp.int32)
    position = jnp.int32(length // 2)
    hidden = jnp.zeros((rows, width), jnp.float32)

    def flops(fn, *args) -> float:
        return float(jax.jit(fn).lower(*args).compile().cost_analysis()['flops']) / rows

    kv = jax.jit(lambda p, c: Stepper(model, p, c, None, length, True).cache)(params, context)
    return {
        'cache': flops(
            lambda p, c, k: Stepper(model, p, c, None, length, True)(seq, position, k)[0], params, context, kv
        ),
        'no_cache': flops(
            lambda p, c: Stepper(model, p, c, None, length, False)(seq, position, None)[0], params, context
        ),
        'head': flops(lambda p, c, h: Stepper(model, p, c, None, length, False).head(h), params, context, hidden),
        'prefill': flops(lambda p, c: Stepper(model, p, c, None, length, True).cache, params, context),
    }


def head_loop(model, params, rows: int, width: int, settings):
    """The jitted loop of the LM head and the pick alone over `rows` rows for `max_len` steps."""
    import jax
    import jax.numpy as jnp

    from vlp_jax.decoding import Stepper, best_token, top_log_probs

    def run(params):
        stepper = Stepper(model, params, jnp.zeros((rows, 1, width)), None, 1, False)

        def body(i, hidden):
            logits = stepper.head(hidden)
            if settings.beam == 1:
                _, logp = best_token(logits)
            else:
                logp = top_log_probs(logits, 2 * settings.beam)[0][:, 0]
            return hidden + 1e-3 * logp[:, None]  # the next step depends on this one, as in a search

        return jax.lax.fori_loop(0, settings.max_len, body, jnp.zeros((rows, width), jnp.float32))

    return jax.jit(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/blip.py:tiny')
    parser.add_argument('--tokens', type=int, nargs='+', default=[20, 30])
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 16])
    parser.add_argument('--beam', type=int, nargs='+', default=[1, 3])
    parser.add_argument('--rounds', type=int, default=7)
    args, overrides = parser.parse_known_args()

    import jax
    import numpy as np

    from vlp_jax.decoding import DecodeSettings, decode

    config = load_config(args.config, [f'--config.model.max_text_len={max(args.tokens) + 1}', *overrides])
    run_setup, state = build(config)
    model, params = run_setup.model, state['params']
    size, width = config.model.image_size, config.model.text.width
    image_tokens = jax.jit(lambda p, x: model.apply({'params': p}, x, method='image_tokens'))
    for tokens, batch, beam in itertools.product(args.tokens, args.batch, args.beam):
        image = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
        context = image_tokens(params, image)
        settings = DecodeSettings(max_len=tokens, min_len=tokens, beam=beam)
        head = head_loop(model, params, batch * beam, width, settings)
        calls = {
            'cache': lambda: decode(model, params, context, None, settings, cache=True),
            'no_cache': lambda: decode(model, params, context, None, settings, cache=False),
            'head': lambda: head(params),
        }
        times = {name: [] for name in calls}
        cpu = {name: [] for name in calls}
        for fn in calls.values():
            jax.block_until_ready(fn())
        names = list(calls)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                start, start_cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(calls[name]())
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        speed = {name: batch * tokens / statistics.median(t) for name, t in times.items()}
        ratio = lambda a, b, t=times: [x / y for x, y in zip(t[a], t[b])]
        flops = step_flops(model, params, context, settings, batch * beam, width)
        print(
            json.dumps(
                {
                    'device': str(jax.devices()[0].device_kind),
                    'config': args.config,
                    'tokens': tokens,
                    'batch': batch,
                    'beam': beam,
                    'rounds': args.rounds,
                    'tokens_per_s_cache': round(speed['cache'], 1),
                    'tokens_per_s_no_cache': round(speed['no_cache'], 1),
                    'tokens_per_s_head': round(speed['head'], 1),
                    'speedup': round(statistics.median(ratio('no_cache', 'cache')), 2),
                    'speedup_min_max': [
                        round(min(ratio('no_cache', 'cache')), 2),
                        round(max(ratio('no_cache', 'cache')), 2),
                    ],
                    'bound': round(statistics.median(ratio('no_cache', 'head')), 2),
                    'cpu_time_speedup': round(statistics.median(ratio('no_cache', 'cache', cpu)), 2),
                    'cpu_time_bound': round(statistics.median(ratio('no_cache', 'head', cpu)), 2),
                    'mflops_per_token': {k: round(v / 1e6, 3) for k, v in flops.items()},
                    'flop_ratio': round(flops['no_cache'] / flops['cache'], 2),
                }
            ),
            flush=True,
        )


if __name__ == '__main__':
    main()
