"""What a captioner scores by writing one caption for every image: the trivial baselines for eval/captioning.

    .venv/bin/python experiments/caption_baselines.py [--config configs/finetune/captioning.py:tiny] \
        [--train-examples 2000] [--candidates 100]

The references are exactly the captioning evaluator's (the config's source, its test split, the same
eval.retrieval_size images spread over it). Two constants are scored with BLEU-4 and CIDEr-D:

- 'most frequent': the commonest caption of the first --train-examples training examples;
- 'best constant': of the --candidates commonest training captions, the one with the highest CIDEr-D on the
  test references themselves (chosen on the test set: an upper bound for any of those constants).

Prints one JSON line per baseline. A captioning run beats the trivial baseline when its eval/captioning
figures are above both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/finetune/captioning.py:tiny')
    parser.add_argument('--train-examples', type=int, default=2000)
    parser.add_argument('--candidates', type=int, default=100)
    args = parser.parse_args()

    import numpy as np

    import vlp_jax.builtin_plugins  # noqa: F401  the sources
    from vlp_jax.config_files import load_config_file
    from vlp_jax.data.eval_sets import spread_indices
    from vlp_jax.derived import source_plugin
    from vlp_jax.evaluators.caption_metrics import caption_scores

    config = load_config_file(args.config)
    plugin = source_plugin(config, str(config.data.name))
    test = plugin.open('test')
    indices = spread_indices(len(test), int(config.eval.retrieval_size))
    references = [list(c) for c in test.batch(indices)['captions'] if c]
    train = plugin.open('train')
    seen = Counter(
        caption
        for captions in train.batch(np.arange(min(args.train_examples, len(train))))['captions']
        for caption in captions
    )
    ranked = [caption for caption, _ in seen.most_common(args.candidates)]

    def scores(caption: str) -> dict[str, float]:
        return caption_scores([caption] * len(references), references)

    best = max(ranked, key=lambda caption: scores(caption)['cider'])
    for name, caption in (('most frequent', ranked[0]), ('best constant', best)):
        result = scores(caption)
        print(json.dumps({'baseline': name, 'caption': caption, **{k: round(v, 4) for k, v in result.items()}}))
    print(json.dumps({'references': len(references), 'per_image': float(np.mean([len(r) for r in references]))}))


if __name__ == '__main__':
    main()
