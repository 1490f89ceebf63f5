"""VQA fine-tuning, ALBEF's recipe (objective 'vqa', docs/decoder.md): the fusion encoder reads the question with
the image, the answer decoder cross-attends to the fused question states and is trained on each question's
answers weighted by their share of the human answers (no label smoothing); evaluated by ranking the answer list
(`eval/vqa/accuracy`, k = 128 as ALBEF's k_test) and by free generation (`eval/vqa/accuracy_generate`), both with
the official VQA accuracy. Answers are written as JSON lines {"question_id", "answer"} to `eval.vqa.output`
(`output_generate`) when set.

The decoder layout (arg `layout`): 'shared' (default, BLIP's VQA shape: the decoder starts from the pretrained
BLIP run's decoder and reads the fused question with its cross-attention) or 'separate' (ALBEF's: a decoder of
its own layers, which the warm start fills from the fusion layers they continue, as ALBEF does:
models/decoder_config.py `warm_start_aliases`; the import summary names them).

Tiny (`:tiny`): configs/blip.py:tiny's model on the synthetic world's questions (source 'shapes_vqa': 6,000
training questions, 600 test ones), warm-started from a tiny BLIP run (`pretrained=PATH`, default
workdirs/blip_tiny; '' starts from scratch), batch 32, 600 steps: 15-30 minutes on 2 shared CPU cores:

    python -m vlp_jax.train --config configs/blip.py:tiny --workdir workdirs/blip_tiny
    python -m vlp_jax.train --config configs/finetune/vqa.py:tiny --workdir workdirs/vqa_tiny
    python -m vlp_jax.generate --workdir workdirs/vqa_tiny --images PHOTO.png --question 'what colour is the circle?'

Full size (no `tiny`): configs/blip.py's model, ALBEF's VQA recipe (configs/VQA.yaml: lr 2e-5, batch 32 x 8
GPUs, 8 epochs, k_test 128); point the data keys at a VQA set and `pretrained` at a pretrained run.

Answer distillation (arg `distill=1|0`): ALBEF's momentum model teaches the decoder its softmax over each answer's
tokens at weight 0.4, ramped over the first epoch (objectives/vqa.py). On by default at full size (ALBEF's
VQA.yaml), off for `:tiny` (whose figures in docs/decoder.md are without it unless said).

Arg: `tiny`, `steps=N`, `pretrained=PATH`, `layout=shared|separate`, `distill=1|0`.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

DEFAULT_TINY_PRETRAINED = 'workdirs/blip_tiny'


def distil(config, enabled: bool):
    """ALBEF's answer distillation (VQA.yaml: distill True, alpha 0.4 ramped over the first epoch): the momentum
    model, without ITC's feature queue."""
    config.loss.momentum.enabled = enabled
    config.loss.momentum.decay = 0.995
    config.loss.momentum.distill_alpha = 0.4
    config.loss.momentum.alpha_ramp_steps = -1
    config.loss.momentum.queue_size = 0
    return config


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
    args = parse_arg(arg, tiny=False, steps=0, pretrained='-', layout='shared', distill=-1)
    if args.tiny:
        config = from_sibling(__file__, '../blip.py', f'tiny,steps={args.steps or 600}')
        config = vqa(config, DEFAULT_TINY_PRETRAINED if args.pretrained == '-' else args.pretrained, args.layout)
        config = distil(config, args.distill == 1)
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
    config = distil(config, args.distill != 0)
    config.batch_size = 256
    config.optim.lr = 2e-5
    config.optim.warmup_steps = 0
    config.data.crop_scale = (0.5, 1.0)  # ALBEF's VQA: RandomResizedCrop(scale=(0.5, 1.0))
    if not args.steps:
        config.total_steps = 8 * max(1, int(config.data.shapes_vqa.train_size) // config.batch_size)
    return config
