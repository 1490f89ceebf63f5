"""SRCL / SACL (Jiang et al., ACL 2023) on ALBEF: ITC's negatives weighted by 1 / similarity,
where the similarity moves from a frozen reference model's (alpha 1) to the model's own
(alpha 0) linearly over the run (tau_w 1.0, no w_min: the schema's loss.srcl defaults).
Everything else is configs/albef.py, momentum model and queue included.

The reference is a frozen vlp_jax checkpoint (the paper's: a model trained with plain InfoNCE
on COCO), loaded from its path at every (re)start and not copied into this run's checkpoints.

Full size (the paper: ALBEF, 4M pairs, 30 epochs, batch 512); the reference's path is the arg:

    python -m vlp_jax.train --config configs/srcl_albef.py:reference=path/to/reference --workdir workdirs/srcl_albef

Tiny (`:tiny`): configs/albef.py:tiny (noisy regime, tiny fusion model, momentum, queue
1,280) + SRCL. Its default reference is configs/shapes_albef_reference.py's run (the same
tiny fusion architecture, trained on the clean regime); train that first:

    python -m vlp_jax.train --config configs/shapes_albef_reference.py --workdir workdirs/shapes_albef_reference
    python -m vlp_jax.train --config configs/srcl_albef.py:tiny --workdir workdirs/srcl_albef_tiny

Arg: `tiny` selects the tiny variant; `steps=N` sets total_steps; `reference=PATH` is the
reference checkpoint (a workdir, its checkpoints/ or one step dir; default
workdirs/shapes_albef_reference for tiny, none for full size), e.g. `:tiny,steps=300`,
`:tiny,reference=workdirs/other_reference`, `:reference=/ckpt/reference`. A path with a comma:
--config.loss.srcl.reference_checkpoint=PATH.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

DEFAULT_TINY_REFERENCE = 'workdirs/shapes_albef_reference'


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0, reference='')
    base = ','.join((['tiny'] if args.tiny else []) + ([f'steps={args.steps}'] if args.steps else []))
    config = from_sibling(__file__, 'albef.py', base or None)
    config.loss.regulators = ('srcl',)
    config.loss.srcl.reference_checkpoint = args.reference or (DEFAULT_TINY_REFERENCE if args.tiny else '')
    return config
