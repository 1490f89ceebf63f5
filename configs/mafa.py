"""MAFA / COSMO (Byun, Kim, Moon, CVPR 2024): GRIT-VLP without the consistency term, plus
connection mining: a frozen fusion model's ITM head scores each anchor's hardest in-batch
negative; above 0.8 it becomes a positive (ITC, ITM and MLM), below 0.5 it stays the ITM
negative, in between the second hardest replaces it; ITC targets are smoothed with eps 0.5
from the first grouped epoch on (epoch 1).

The discriminator is a frozen vlp_jax FUSION checkpoint (loss.cosmo.discriminator='itm'; the
paper's: ALBEF fine-tuned for COCO retrieval), loaded from its path at every (re)start and
not copied into this run's checkpoints.

Full size: configs/grit_vlp.py's recipe (ViT-B/16 at 256 px + BERT-base 6 + 6, batch 512,
grouped batches, MLM 50%, hardest ITM negatives, 20 epochs, lr 1e-4, wd 0.02) with
consistency_weight 0; the discriminator's path is the arg:

    python -m vlp_jax.train --config configs/mafa.py:reference=path/to/albef_coco --workdir workdirs/mafa

Tiny (`:tiny`): configs/grit_vlp.py:tiny (noisy regime, tiny fusion model) with the same
changes. Its default discriminator is configs/shapes_albef_reference.py's run (the same tiny
fusion architecture, trained on the clean regime); train that first:

    python -m vlp_jax.train --config configs/shapes_albef_reference.py --workdir workdirs/shapes_albef_reference
    python -m vlp_jax.train --config configs/mafa.py:tiny --workdir workdirs/mafa_tiny

Arg: `tiny` selects the tiny variant; `steps=N` sets total_steps; `reference=PATH` is the
discriminator's checkpoint (a workdir, its checkpoints/ or one step dir; default
workdirs/shapes_albef_reference for tiny, none for full size), e.g. `:tiny,steps=300`,
`:tiny,reference=workdirs/other_reference`, `:reference=/ckpt/albef_coco`. A path with a comma:
--config.loss.cosmo.reference_checkpoint=PATH.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

DEFAULT_TINY_REFERENCE = 'workdirs/shapes_albef_reference'


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0, reference='')
    base = ','.join((['tiny'] if args.tiny else []) + ([f'steps={args.steps}'] if args.steps else []))
    config = from_sibling(__file__, 'grit_vlp.py', base or None)
    config.loss.consistency_weight = 0.0
    config.loss.regulators = ('cosmo',)
    config.loss.cosmo.discriminator = 'itm'
    config.loss.cosmo.high = 0.8
    config.loss.cosmo.low = 0.5
    config.loss.cosmo.eps = 0.5
    config.loss.cosmo.smoothing_start_step = -1  # the first step of epoch 1: GRIT's first grouped epoch
    config.loss.cosmo.reference_checkpoint = args.reference or (DEFAULT_TINY_REFERENCE if args.tiny else '')
    return config
