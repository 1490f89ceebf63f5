"""GRIT-VLP (Byun et al., ECCV 2022): grouped hard-negative mini-batches, ITC with a key-side
stop-gradient and the consistency term, ITM on the hardest in-batch negative, MLM 50%; no
momentum model and no queue of negatives. The base recipe of configs/mafa.py.

Full size (no arg): configs/albef.py's model, data and optimizer without the momentum model:

    python -m vlp_jax.train --config configs/grit_vlp.py --workdir workdirs/grit_vlp

- Paper: 4 GPUs x 128 = 512, each GPU grouping its own entries with a queue of 48,000 and
  search spaces of 1,920 (15 of its batches of 128), 20 epochs, AdamW lr 1e-4, wd 0.02,
  ALBEF's 2,000-iteration warmup, captions truncated to 25 tokens.
- sampling.grit.search_space must be a multiple of the global batch_size (512), which 1,920 is
  not. Here the sizes are global totals: search_space 7,680 = 4 x 1,920 = 15 global
  batches (the paper's search-space-to-batch ratio, which sets how hard the batches are)
  and queue_size 192,000 = 4 x 48,000 (a fill every 375 steps, as in the paper), grouped
  over the global batch (vlp_jax's choice, docs/methods.md). The paper's exact per-GPU grouping is
  `--config.sampling.grit.scope=local --config.mesh.local_shards=4`: 4 shards of 128, each
  grouping 48,000 entries in search spaces of 1,920, on any device count.
- ITC negatives are the global batch of 512 (vlp_jax requires it for fusion models); the
  paper's ITC and ITM use each GPU's 128.
- 20 epochs of 7,812 steps (4,000,000 pairs, see configs/albef.py) = 156,240 steps. The
  paper keeps ALBEF's 30-epoch cosine and stops at epoch 20 (lr ~3.3e-5 there); vlp_jax's
  cosine reaches lr * min_lr_ratio = 1e-5 at the last step.

Tiny (`:tiny`): configs/shapes_grit.py (noisy regime, 12,800 pairs = 100 steps per epoch at
batch 128, queue 6,400, search space 1,280) with configs/shapes_albef.py's tiny fusion model
(2 text layers + 1 fusion layer); ITM re-ranks the top 16.

    python -m vlp_jax.train --config configs/grit_vlp.py:tiny --workdir workdirs/grit_vlp_tiny

Arg: `tiny` selects the tiny variant; `steps=N` sets total_steps (e.g. `:tiny,steps=300`).
No arg = full size.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

EPOCHS = 20
STEPS_PER_EPOCH = 4_000_000 // 512  # configs/albef.py's assumption: 7,812
GPUS = 4  # the paper's per-GPU queue and search space, as global totals
QUEUE_SIZE = GPUS * 48_000  # 192,000
SEARCH_SPACE = GPUS * 1920  # 7,680 = 15 x 512


def grit_vlp(config):
    """GRIT-VLP's ITC, ITM and MLM options on an ALBEF-style config."""
    config.loss.stop_grad_keys = True
    config.loss.consistency_weight = 0.2
    config.loss.itm.negatives = 'hardest'
    config.loss.mlm.mask_ratio = 0.5
    return config


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0)
    if args.tiny:  # configs/shapes_grit.py's sampling and data with configs/shapes_albef.py's tiny fusion model
        config = from_sibling(__file__, 'shapes_albef.py', f'steps={args.steps or 600}')
        grit = from_sibling(__file__, 'shapes_grit.py')
        config.data.shapes.train_size = grit.data.shapes.train_size
        config.sampling = grit.sampling
        return grit_vlp(config)
    config = from_sibling(__file__, 'albef.py', f'steps={args.steps or EPOCHS * STEPS_PER_EPOCH}')
    config.loss.momentum.enabled = False
    config.loss.momentum.queue_size = 0
    config.sampling.name = 'grit'
    config.sampling.grit.scope = 'global'
    config.sampling.grit.queue_size = QUEUE_SIZE
    config.sampling.grit.search_space = SEARCH_SPACE
    return grit_vlp(config)
