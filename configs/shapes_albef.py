"""ALBEF without the momentum model on the noisy regime: ITC + ITM + MLM on a tiny fusion model.

The text tower of configs/shapes_tiny.py (2 layers) gains 1 fusion layer that
cross-attends to the image tokens; ITM takes one negative per anchor sampled from the
batch's similarities at the learned temperature, MLM masks 15% of the caption tokens. ITC
is the same regulated contrastive loss as the dual encoder, so `loss.regulators` works here too.

    python -m vlp_jax.train --config configs/shapes_albef.py --workdir workdirs/shapes_albef

Arg (optional): steps=N (default 600).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling


def tiny_fusion(config):
    """The tiny fusion model and ALBEF's objective on any config."""
    config.objective = 'albef'
    config.model.kind = 'fusion'
    config.model.text.fusion_layers = 1
    config.loss.itm.negatives = 'sample'
    config.loss.mlm.mask_ratio = 0.15
    config.eval.rerank_k = 16  # ITC retrieval, and its top 16 re-ranked by ITM
    return config


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    return tiny_fusion(from_sibling(__file__, 'shapes_noisy.py', f'steps={args.steps}'))
