"""VQA fine-tuning, ALBEF's recipe (objective 'vqa', docs/decoder.md): the fusion encoder reads the question with
the image, the answer decoder cross-attends to the fused question states and is trained on each question's
answers weighted by their share of the human answers (no label smoothing); evaluated by ranking the answer list
(`eval/vqa/accuracy`, k = 128 as ALBEF's k_test) and by free generation (`eval/vqa/accuracy_generate`), both with
the official VQA accuracy. Answers are written as JSON lines {"question_id", "answer"} to `eval.vqa.output`
(`output_generate`) when set.

The decoder layout (arg `layout`): 'shared' (default, BLIP's VQA shape: the decoder starts from the pretrained
BLIP run's decoder and reads the fused question with its cross-attention) or 'separate' (ALBEF's: a decoder of
its own layers; ALBEF fills them from the fusion layers, but models/decoder.py warm_start_aliases is not wired
into the warm start yet, so only what the checkpoint holds under the same path is restored).

Tiny (`:tiny`): configs/blip.py:tiny's model on the synthetic world's questions (source 'shapes_vqa': 6,000
training questions, 600 test ones), warm-started from a tiny BLIP run (`pretrained=PATH`, default
workdirs/blip_tiny; '' starts from scratch), batch 32, 600 steps: 15-30 minutes on 2 shared CPU cores:

    python -m vlp_jax.train --config configs/blip.py:tiny --workdir workdirs/blip_tiny
    python -m vlp_jax.train --config configs/finetune/vqa.py:tiny --workdir workdirs/vqa_tiny
    python -m vlp_jax.generate --workdir workdirs/vqa_tiny --images PHOTO.png --question 'what colour is the circle?'

Full size (no `tiny`): configs/blip.py's model, ALBEF's VQA recipe (configs/VQA.yaml: lr 2e-5, batch 32 x 8
GPUs, 8 epochs, k_test 128); point the data keys at a VQA set and `pretrained` at a pretrained run.

Arg: `tiny`, `steps=N`, `pretrained=PATH`, `layout=shared|separate`.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

DEFAULT_TINY_PRETRAINED = 'workdirs/blip_tiny'


def vqa(config, pretrained: str, layout: str):
    config.objective = 'vqa'
    config.data.name = 'shapes_vqa'
    config.model.decoder.layout = layout
    config.model.decoder.context = 'fused'
    config.model.init_checkpoint = pretrained
    config.loss.regulators = ()
    config.loss.momentum.enabled = False
    config.loss.lm.prompt = ''
    config.loss.lm.label_smoothing = 0.0  # ALBEF's VQA decoder: plain NLL
    config.loss.vqa.answer_len = 8
    config.eval.sets = ('vqa:shapes_vqa',)
    config.eval.rerank_k = 0
    config.eval.vqa.k = 128
    config.data.flip = 'auto'  # the source marks the questions whose answer says left or right
    return config


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0, pretrained='-', layout='shared')
    if args.tiny:
        config = from_sibling(__file__, '../blip.py', f'tiny,steps={args.steps or 600}')
        config = vqa(config, DEFAULT_TINY_PRETRAINED if args.pretrained == '-' else args.pretrained, args.layout)
        config.batch_size = 32  # x 3 answer slots decoded per question; the word logits dominate a CPU step
        config.optim.lr = 3e-4
        config.optim.warmup_steps = 20
        config.data.crop_scale = (1.0, 1.0)  # a crop could cut a counted object off
        config.eval_every = 300
        config.checkpoint_every = 300
        config.eval.vqa.k = 16  # of 55 candidates (ALBEF: 128 of 3,128); k = 55 is the exact argmax
        return config
    config = from_sibling(__file__, '../blip.py', f'steps={args.steps or 1}')
    config = vqa(config, '' if args.pretrained == '-' else args.pretrained, args.layout)
    config.batch_size = 256
    config.optim.lr = 2e-5
    config.optim.warmup_steps = 0
    config.data.crop_scale = (0.5, 1.0)  # ALBEF's VQA: RandomResizedCrop(scale=(0.5, 1.0))
    if not args.steps:
        config.total_steps = 8 * max(1, int(config.data.shapes_vqa.train_size) // config.batch_size)
    return config
