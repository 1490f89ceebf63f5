"""ALBEF without the momentum model on the noisy regime: ITC + ITM + MLM on a tiny fusion model.

The text tower of configs/shapes_tiny.py (2 layers) gains 1 fusion layer that
cross-attends to the image tokens; ITM takes one negative per anchor sampled from the
batch's similarities, MLM masks 15% of the caption tokens. ITC is the same regulated
contrastive loss as the dual encoder, so `loss.regulators` works here too.

    python -m vlp_jax.train --config configs/shapes_albef.py --workdir workdirs/shapes_albef

Arg (optional): a number of training steps, as for shapes_tiny.
"""

from vlp_jax.config import sibling_config


def get_config(arg=None):
    config = sibling_config(__file__, 'shapes_noisy.py', arg)
    config.model.kind = 'fusion'
    config.model.text.fusion_layers = 1
    config.loss.itm.negatives = 'sample'
    config.loss.mlm.mask_ratio = 0.15
    config.eval.rerank_k = 16  # ITC retrieval, and its top 16 re-ranked by ITM
    return config
