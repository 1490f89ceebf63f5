"""Stage 2 baseline: plain InfoNCE on the NOISY, many-to-many regime.

Coarse captions ("a red circle", "something blue") are true of many images, so ~21% of
in-batch negatives are false negatives at batch 128, and 20% of captions are swapped
for another example's, so ~14% of positives are wrong: the synthetic stand-in for web
pairs. configs/shapes_srcl.py, shapes_cosmo.py and shapes_srcl_cosmo.py are this
config plus regulators, so they compare against it on the same data, steps and seed.

    python -m vlp_jax.train --config configs/shapes_noisy.py --workdir workdirs/shapes_noisy

Arg (optional): a number of training steps, as for shapes_tiny.
"""

from vlp_jax.config import sibling_config

NOISE = 0.2


def get_config(arg=None):
    config = sibling_config(__file__, 'shapes_tiny.py', arg)
    config.data.detail = 'coarse'
    config.data.caption_noise = NOISE
    return config
