"""Captioning fine-tuning, BLIP's recipe (objective 'captioning', docs/decoder.md): the decoder's LM loss on
each image's captions written after the prompt 'a picture of ' (masked out of the loss), label smoothing 0.1;
evaluated by BLEU-4 and CIDEr-D of beam-searched captions (beam 3, 5 to 20 tokens), which are also written as
JSON lines to <workdir>-less `eval.captioning.output` when set.

Tiny (`:tiny`): configs/blip.py:tiny's model on the synthetic shapes world, warm-started from a tiny BLIP run
(`pretrained=PATH`, default workdirs/blip_tiny; '' starts from scratch), minutes on 2 CPU cores:

    python -m vlp_jax.train --config configs/blip.py:tiny --workdir workdirs/blip_tiny
    python -m vlp_jax.train --config configs/finetune/captioning.py:tiny --workdir workdirs/caption_tiny
    python -m vlp_jax.generate --workdir workdirs/caption_tiny --images PHOTO.png

Full size (no `tiny`): configs/blip.py's model, lr 1e-5, 5 epochs at batch 256 over the training set
(BLIP's caption_coco.yaml: lr 1e-5, batch 32 x 8 GPUs, 5 epochs); point the data keys at COCO Karpathy
(docs/data.md) and `pretrained` at a BLIP run.

Arg: `tiny`, `steps=N`, `pretrained=PATH`.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

DEFAULT_TINY_PRETRAINED = 'workdirs/blip_tiny'


def captioning(config, pretrained: str):
    config.objective = 'captioning'
    config.loss.regulators = ()
    config.loss.lm.prompt = 'a picture of '
    config.loss.lm.label_smoothing = 0.1
    config.model.init_checkpoint = pretrained
    config.eval.sets = ('captioning:' + str(config.data.name),)
    config.eval.rerank_k = 0
    return config


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0, pretrained='-')
    if args.tiny:
        config = from_sibling(__file__, '../blip.py', f'tiny,steps={args.steps or 300}')
        config = captioning(config, DEFAULT_TINY_PRETRAINED if args.pretrained == '-' else args.pretrained)
        config.optim.lr = 3e-4
        config.optim.warmup_steps = 20
        config.eval.retrieval_size = 200
        return config
    config = from_sibling(__file__, '../blip.py', f'steps={args.steps or 1}')
    config = captioning(config, '' if args.pretrained == '-' else args.pretrained)
    config.batch_size = 256
    config.optim.lr = 1e-5
    config.optim.warmup_steps = 0
    if not args.steps:
        config.total_steps = 5 * max(1, int(config.data.shapes.train_size) // config.batch_size)
    return config
