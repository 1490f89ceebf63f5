"""Stage 1 for the tiny fusion recipes: a frozen tiny FUSION model trained on the CLEAN regime.

configs/shapes_albef.py (ITC + ITM + MLM on the tiny fusion model, no momentum model) on
the clean regime of configs/shapes_reference.py: fine captions, no caption noise, the
synthetic stand-in for COCO. It is the default frozen model of the tiny recipes that need
one, and has their architecture:

- configs/mafa.py:tiny: MAFA's ITM discriminator (the paper's: ALBEF fine-tuned on COCO);
- configs/srcl_albef.py:tiny: SRCL's reference (the paper's: a model trained on COCO).

    python -m vlp_jax.train --config configs/shapes_albef_reference.py --workdir workdirs/shapes_albef_reference

Arg (optional): steps=N (default 600).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    config = from_sibling(__file__, 'shapes_albef.py', f'steps={args.steps}')
    config.data.shapes.detail = 'fine'
    config.data.shapes.caption_noise = 0.0
    return config
