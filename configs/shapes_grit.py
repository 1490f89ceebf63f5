"""GRIT-VLP on the noisy regime: grouped hard-negative mini-batches, key-side stop-gradient ITC, consistency term.

Epoch 0 is a random permutation; every later epoch replays the previous epoch's
embeddings grouped by the greedy alternating chain (queue 6,400, search space 1,280),
with the mini-batches shuffled. The data set is cut to 12,800 pairs (100 steps per epoch
at batch 128) so a short CPU run sees several grouped epochs.

    python -m vlp_jax.train --config configs/shapes_grit.py --workdir workdirs/shapes_grit

Arg (optional): steps=N (default 600).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

TRAIN_SIZE = 12_800


def grit(config):
    """GRIT-VLP's sampling and ITC options on any config (the tiny world cut to 100 steps an epoch)."""
    config.data.shapes.train_size = TRAIN_SIZE
    config.sampling.name = 'grit'
    config.sampling.grit.queue_size = 6400
    config.sampling.grit.search_space = 1280
    config.loss.stop_grad_keys = True
    config.loss.consistency_weight = 0.2
    return config


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    return grit(from_sibling(__file__, 'shapes_noisy.py', f'steps={args.steps}'))
