"""COSMO/MAFA on the noisy regime: hardest negatives the frozen reference scores above
loss.cosmo.high become extra positives, and the targets are label-smoothed.

Needs the reference model of configs/shapes_reference.py (the cosine discriminator):

    python -m vlp_jax.train --config configs/shapes_cosmo.py --workdir workdirs/shapes_cosmo
    # other reference: configs/shapes_cosmo.py:path/to/reference
    # or --config.loss.cosmo.reference_checkpoint=path/to/reference

Arg (optional): the reference run; default workdirs/shapes_reference. It is loaded from
that path at every (re)start, not copied into this run's checkpoints.
"""

from vlp_jax.config import sibling_config

DEFAULT_REFERENCE = 'workdirs/shapes_reference'


def get_config(arg=None):
    config = sibling_config(__file__, 'shapes_noisy.py')
    config.loss.regulators = ('cosmo',)
    config.loss.cosmo.reference_checkpoint = arg or DEFAULT_REFERENCE
    return config
