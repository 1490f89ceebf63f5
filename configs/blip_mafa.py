"""MAFA on BLIP: COSMO's connection mining and smoothing (configs/mafa.py) with BLIP's objective and shared
decoder (configs/blip.py): the seeds' "compatibility with the BLIP-family model". A frozen fusion model's
ITM head scores each anchor's hardest in-batch negative; above 0.8 it becomes an ITC and ITM positive and an
extra LM row (the decoder captions the converted pair), below 0.5 it stays the ITM negative, in between the
second hardest replaces it; ITC targets are smoothed from epoch 1 on, over GRIT-VLP's grouped batches.

Full size: configs/mafa.py's recipe (ALBEF-sized fusion model, GRIT sampling, no momentum model) with BLIP's
objective; the discriminator's path is the arg:

    python -m vlp_jax.train --config configs/blip_mafa.py:reference=path/to/albef_coco --workdir workdirs/blip_mafa

Tiny (`:tiny`): configs/mafa.py:tiny with BLIP's objective; its default discriminator is
configs/shapes_albef_reference.py's run (train it first, see configs/mafa.py):

    python -m vlp_jax.train --config configs/blip_mafa.py:tiny --workdir workdirs/blip_mafa_tiny

It logs train/itc, train/itm, train/lm and COSMO's train/cosmo/precision and recall. Arg: as configs/mafa.py
(`tiny`, `steps=N`, `reference=PATH`).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0, reference='')
    parts = (['tiny'] if args.tiny else []) + ([f'steps={args.steps}'] if args.steps else [])
    parts += [f'reference={args.reference}'] if args.reference else []
    config = from_sibling(__file__, 'mafa.py', ','.join(parts) or None)
    config.objective = 'blip'
    config.model.decoder.layout = 'shared'
    config.model.decoder.context = 'image'
    config.loss.lm.label_smoothing = 0.1
    return config
