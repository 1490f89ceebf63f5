"""BLIP (Li et al., "BLIP: Bootstrapping Language-Image Pre-training", ICML 2022): ITC + ITM + LM on a fusion
model with an image-grounded decoder that shares every weight with the text encoder but its causal
self-attention (objective 'blip', model.decoder.layout='shared'; docs/decoder.md).

Full size (no arg): configs/albef.py's model and momentum model with BLIP's pretraining recipe:

    python -m vlp_jax.train --config configs/blip.py --workdir workdirs/blip

- ViT-B/16 at 224 px + BERT-base as 6 text layers and 6 fusion layers (vlp_jax's fusion layout, ALBEF's).
  BLIP's text encoder puts cross-attention in all 12 BERT layers and skips it for ITC; vlp_jax's text layers
  have none, so here the multimodal encoder is ALBEF's 6 + 6, and the decoder runs the same 12 layers
  (causal, 6 of them cross-attending to the image) with its own self-attention.
- Captions of 30 tokens (BLIP's tokenizer max_length 30); LM with label smoothing 0.1; ITM negatives
  sampled from softmax(sim / temp) + 1e-4 (BLIP's code); momentum model (0.995), queue 57,600, ITC
  distillation alpha 0.4 ramped over the first epoch.
- Batch 2,880 (BLIP ViT-B), AdamW lr 2e-4 (3,000 warmup steps), weight decay 0.05,
  20 epochs of 14M pairs (BLIP's 14M set): 4,861 steps per epoch. BLIP decays the lr by 0.85 per epoch;
  here a per-step cosine to lr * 0.05.

Tiny (`:tiny`): configs/albef.py:tiny (the noisy shapes regime, the tiny fusion model, the momentum model,
queue 1,280) with BLIP's objective and a shared decoder, minutes on 2 CPU cores:

    python -m vlp_jax.train --config configs/blip.py:tiny --workdir workdirs/blip_tiny

It logs train/itc, train/itm and train/lm. Arg: `tiny`; `steps=N` sets total_steps.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

BATCH_SIZE = 2880
TRAIN_PAIRS = 14_000_000
EPOCHS = 20
STEPS_PER_EPOCH = TRAIN_PAIRS // BATCH_SIZE  # 4,861
QUEUE_SIZE = 57_600  # BLIP's queue (20 batches of 2,880)


def blip(config):
    """BLIP's objective and shared decoder on an ALBEF-style fusion config."""
    config.objective = 'blip'
    config.model.decoder.layout = 'shared'
    config.model.decoder.context = 'image'
    config.loss.lm.label_smoothing = 0.1
    config.loss.itm.negatives = 'sample'
    return config


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0)
    if args.tiny:
        return blip(from_sibling(__file__, 'albef.py', f'tiny,steps={args.steps or 600}'))
    config = blip(from_sibling(__file__, 'albef.py', f'steps={args.steps or EPOCHS * STEPS_PER_EPOCH}'))
    config.batch_size = BATCH_SIZE
    config.eval_every = STEPS_PER_EPOCH
    config.model.image_size = 224
    config.model.max_text_len = 30
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 3000
    config.optim.weight_decay = 0.05
    config.optim.min_lr_ratio = 0.05
    config.loss.momentum.queue_size = QUEUE_SIZE
    config.data.shapes.train_size = TRAIN_PAIRS
    config.data.crop_scale = (0.5, 1.0)  # BLIP's RandomResizedCrop(224, scale=(0.5, 1.0))
    return config
