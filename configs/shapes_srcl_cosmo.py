"""SRCL weights and COSMO/MAFA converted + smoothed targets in one run, on the noisy regime.

Both read the same frozen reference (configs/shapes_reference.py), loaded once and run
once per step:

    python -m vlp_jax.train --config configs/shapes_srcl_cosmo.py --workdir workdirs/shapes_srcl_cosmo
    # other reference: configs/shapes_srcl_cosmo.py:path/to/reference

Arg (optional): the reference run for both; default workdirs/shapes_reference. Set
loss.srcl.reference_checkpoint / loss.cosmo.reference_checkpoint to use two models.
"""

from vlp_jax.config import sibling_config

DEFAULT_REFERENCE = 'workdirs/shapes_reference'


def get_config(arg=None):
    config = sibling_config(__file__, 'shapes_noisy.py')
    config.loss.regulators = ('srcl', 'cosmo')
    config.loss.srcl.reference_checkpoint = arg or DEFAULT_REFERENCE
    config.loss.cosmo.reference_checkpoint = arg or DEFAULT_REFERENCE
    return config
