"""Stage 1: the frozen reference model for SRCL and COSMO's cosine discriminator.

Plain InfoNCE on the CLEAN regime: fine captions (every object's shape, colour, size
and position) and no caption noise, so almost no caption is true of another image in
the batch (~0.2% of in-batch negatives are false negatives at batch 128) and every
positive is correct, the synthetic stand-in for human-annotated COCO pairs.
Same architecture as configs/shapes_tiny.py, which a reference must match.

    python -m vlp_jax.train --config configs/shapes_reference.py --workdir workdirs/shapes_reference

Arg (optional): a number of training steps, as for shapes_tiny.
"""

from vlp_jax.config import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, 'shapes_tiny.py', arg)
    config.data.detail = 'fine'
    config.data.caption_noise = 0.0
    return config
