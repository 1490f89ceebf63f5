"""Tiny dual encoder on the built-in captioned-shapes world: the laptop demo.

Every value is the schema's default (`python -m vlp_jax.train --config_help` lists each key with
its help): a 3-layer ViT (width 96, 8-px patches at 64 px) and a 2-layer text tower, 64-d shared
space, InfoNCE at batch 128, AdamW lr 1e-3 with 100 warmup steps and cosine decay, sized to train
in a few minutes on 2 CPU cores and reach zero-shot retrieval far above chance.

    python -m vlp_jax.train --config configs/shapes_tiny.py --workdir workdirs/shapes_tiny

Arg (optional): steps=N (default 600), e.g. `configs/shapes_tiny.py:steps=200`.
"""

from vlp_jax.config import default_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    config = default_config()
    config.total_steps = args.steps
    return config
