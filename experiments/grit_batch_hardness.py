"""Are GRIT's batches harder? Scored by one fixed model, so the answer doesn't depend on who trained on them.

    .venv/bin/python experiments/grit_batch_hardness.py --run workdirs/experiments/grit_sampling/GRIT_seed0 \
        --judge workdirs/experiments/false_negatives/reference [--batches 10]

It reads the epoch order saved in the GRIT run's latest checkpoint and a seeded random
permutation of the same data. For each, it prints the judge model's mean cosine
between each image and its most similar non-matching caption, averaged over the first
--batches mini-batches. The in-training `train/hardest_negative_similarity` compares two
different models, so the two can disagree.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--run', required=True, help='a GRIT workdir (sampling.name=grit)')
    parser.add_argument('--judge', required=True, help='a checkpoint of the same architecture that scores batches')
    parser.add_argument('--config', default='', help="the run's config file[:ARG] (default: the run's own config.json)")
    parser.add_argument('--batches', type=int, default=10)
    args = parser.parse_args()

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from vlp_jax import parallel
    from vlp_jax import setup as setup_lib
    from vlp_jax.checkpointing import resolve_step_dir, restore_params_from
    from vlp_jax.config_files import load_config_file, saved_config
    from vlp_jax.data.batch import normalise_images
    from vlp_jax.data.tokenizer import shared_tokenizer
    from vlp_jax.derived import source_plugin
    from vlp_jax.objectives.dual_encoder import hardest_negative_similarity

    config = load_config_file(args.config) if args.config else saved_config(args.run)
    judge_setup = setup_lib.build(config, jax.devices()[:1])
    params = restore_params_from(args.judge, judge_setup.abstract_state['params'])
    step_dir = resolve_step_dir(pathlib.Path(args.run).absolute())
    sampler = ocp.StandardCheckpointer().restore(step_dir / 'state')['sampler']
    grit_order = np.asarray(sampler['order'])
    if grit_order.size == 0 or grit_order[0] < 0:  # the sampler's NO_ORDER: epoch 0 runs in a random order
        sys.exit(
            f'{args.run} is still in its first epoch (epoch 0 is random; GRIT groups from epoch 1): '
            'train it past one epoch, or pass a later checkpoint.'
        )
    source = source_plugin(config, str(config.data.name)).open('train')
    tokenizer = shared_tokenizer(config.model.max_text_len)
    encode_images, encode_texts = judge_setup.encoders()

    def hardness(indices) -> float:
        examples = source.batch(indices)
        tokens = tokenizer([captions[0] for captions in examples['captions']])
        images = parallel.to_host(encode_images(params, normalise_images(examples['image'])))
        texts = parallel.to_host(encode_texts(params, tokens['text_ids'], tokens['text_mask']))
        return float(hardest_negative_similarity(images @ texts.T))

    b = config.batch_size
    random_order = np.random.default_rng(config.seed).permutation(len(source))
    grit = np.mean([hardness(grit_order[k * b : (k + 1) * b]) for k in range(args.batches)])
    random = np.mean([hardness(random_order[k * b : (k + 1) * b]) for k in range(args.batches)])
    print(f'epoch {int(sampler["epoch"])} of {args.run}, judged by {args.judge}:')
    print(f'hardest-negative cosine  GRIT batches {grit:.3f}  random batches {random:.3f}')


if __name__ == '__main__':
    main()
