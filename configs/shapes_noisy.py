"""Stage 2 baseline: plain InfoNCE on the NOISY, many-to-many regime.

Coarse captions ("a red circle", "something blue") are true of many images, so ~21% of
in-batch negatives are false negatives at batch 128, and 20% of captions are swapped
for another example's, so ~14% of positives are wrong: the synthetic stand-in for web
pairs. configs/shapes_srcl.py, shapes_cosmo.py and shapes_srcl_cosmo.py are this
config plus regulators, so they compare against it on the same data, steps and seed.

    python -m vlp_jax.train --config configs/shapes_noisy.py --workdir workdirs/shapes_noisy

Arg (optional): steps=N (default 600).
"""

from vlp_jax.config import default_config, parse_arg

NOISE = 0.2


def noisy(config):
    """The noisy regime's data keys on any config."""
    config.data.shapes.detail = 'coarse'
    config.data.shapes.caption_noise = NOISE
    return config


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    config = default_config()
    config.total_steps = args.steps
    return noisy(config)
