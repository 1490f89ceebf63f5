"""COSMO on the noisy regime: the hardest negative becomes a positive when a frozen model's cosine
says it matches, and the targets are label-smoothed.

Needs the reference model of configs/shapes_reference.py (train it first):

    python -m vlp_jax.train --config configs/shapes_cosmo.py --workdir workdirs/shapes_cosmo
    python -m vlp_jax.train --config configs/shapes_cosmo.py:reference=path/to/reference --workdir ...

Arg (optional): reference=PATH (a workdir, its checkpoints/ or one step dir; default
workdirs/shapes_reference) and steps=N (default 600). The reference is loaded from that path
at every (re)start; it is not copied into this run's checkpoints, so keep it in place until
the run ends. A path with a comma: set the loss.<regulator>.reference_checkpoint key instead.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

DEFAULT_REFERENCE = 'workdirs/shapes_reference'


def get_config(arg=None):
    args = parse_arg(arg, steps=600, reference=DEFAULT_REFERENCE)
    config = from_sibling(__file__, 'shapes_noisy.py', f'steps={args.steps}')
    config.loss.regulators = ('cosmo',)
    config.loss.cosmo.reference_checkpoint = args.reference
    return config
