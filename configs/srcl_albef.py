"""SRCL / SACL (Jiang et al., ACL 2023) on ALBEF: ITC's negatives weighted by 1 / similarity,
where the similarity moves from a frozen reference model's (alpha 1) to the model's own
(alpha 0) linearly over the run (tau_w 1.0, no w_min: configs/shapes_tiny.py's loss.srcl
defaults). Everything else is configs/albef.py, momentum model and queue included.

The reference is a frozen vlp_jax checkpoint (the paper's: a model trained with plain InfoNCE
on COCO), loaded from its path at every (re)start and not copied into this run's checkpoints.

Full size (the paper: ALBEF, 4M pairs, 30 epochs, batch 512); the reference's path is the arg:

    python -m vlp_jax.train --config configs/srcl_albef.py:path/to/reference --workdir workdirs/srcl_albef

Tiny (`:tiny`): configs/albef.py:tiny (noisy regime, tiny fusion model, momentum, queue
1,280) + SRCL. Its default reference is configs/shapes_albef_reference.py's run (the same
tiny fusion architecture, trained on the clean regime); train that first:

    python -m vlp_jax.train --config configs/shapes_albef_reference.py --workdir workdirs/shapes_albef_reference
    python -m vlp_jax.train --config configs/srcl_albef.py:tiny --workdir workdirs/srcl_albef_tiny

Arg: comma-separated tokens, any order: 'tiny' selects the tiny variant; a number sets
total_steps; anything else is the reference checkpoint (a workdir, its checkpoints/ or one
step dir; default workdirs/shapes_albef_reference for tiny, none for full size), e.g.
`:tiny,300`, `:tiny,workdirs/other_reference`, `:/ckpt/reference`. A path with a comma:
--config.loss.srcl.reference_checkpoint=PATH.
"""

from vlp_jax.config import ConfigError, sibling_config

DEFAULT_TINY_REFERENCE = 'workdirs/shapes_albef_reference'


def get_config(arg=None):
    tokens = [token.strip() for token in (arg or '').split(',') if token.strip()]
    paths = [token for token in tokens if token != 'tiny' and not token.isdigit()]
    if len(paths) > 1:
        raise ConfigError(f'config arg {arg!r} names more than one reference checkpoint: {paths}.')
    tiny = 'tiny' in tokens
    base_arg = ','.join(token for token in tokens if token not in paths)
    config = sibling_config(__file__, 'albef.py', base_arg or None)
    config.loss.regulators = ('srcl',)
    config.loss.srcl.reference_checkpoint = paths[0] if paths else (DEFAULT_TINY_REFERENCE if tiny else '')
    return config
