"""SRCL on the noisy regime: negatives weighted by 1 / similarity, from the reference model to the model itself.

Needs the reference model of configs/shapes_reference.py (train it first):

    python -m vlp_jax.train --config configs/shapes_srcl.py --workdir workdirs/shapes_srcl
    python -m vlp_jax.train --config configs/shapes_srcl.py:path/to/reference --workdir ...
    # or --config.loss.srcl.reference_checkpoint=path/to/reference

Arg (optional): the reference run (a workdir, its checkpoints/ or one step dir); default
workdirs/shapes_reference. The reference is loaded from that path at every (re)start;
it is not copied into this run's checkpoints, so keep it in place until the run ends.
Steps: --config.total_steps=N (alpha decays over the whole run by default).
"""

from vlp_jax.config import sibling_config

DEFAULT_REFERENCE = 'workdirs/shapes_reference'


def get_config(arg=None):
    config = sibling_config(__file__, 'shapes_noisy.py')
    config.loss.regulators = ('srcl',)
    config.loss.srcl.reference_checkpoint = arg or DEFAULT_REFERENCE
    return config
