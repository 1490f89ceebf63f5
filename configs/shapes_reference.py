"""Stage 1: the frozen reference model for SRCL and COSMO's cosine discriminator.

Plain InfoNCE on the CLEAN regime: fine captions (every object's shape, colour, size
and position) and no caption noise, so almost no caption is true of another image in
the batch (~0.2% of in-batch negatives are false negatives at batch 128) and every
positive is correct, the synthetic stand-in for human-annotated COCO pairs.
The architecture of configs/shapes_tiny.py (a frozen model needs only the same image
size and text length as the run that reads it).

    python -m vlp_jax.train --config configs/shapes_reference.py --workdir workdirs/shapes_reference

Arg (optional): steps=N (default 600).
"""

from vlp_jax.config import default_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    config = default_config()
    config.total_steps = args.steps
    config.data.shapes.detail = 'fine'
    config.data.shapes.caption_noise = 0.0
    return config
