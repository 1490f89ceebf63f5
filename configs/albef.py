"""ALBEF (Li et al., "Align before Fuse", NeurIPS 2021): ITC with a momentum model, a feature
queue and momentum distillation, + ITM + MLM on a fusion model (objective 'albef'). The base
recipe of configs/srcl_albef.py (and, without momentum, of configs/grit_vlp.py and configs/mafa.py).

Full size (no arg), the paper's pretraining recipe:

    python -m vlp_jax.train --config configs/albef.py --workdir workdirs/albef

- ViT-B/16 at 256 px (86M) + BERT-base as 6 text layers and 6 fusion layers (self-attention,
  cross-attention to the image tokens, MLP): text.variant='custom' with depth 6 and
  fusion_layers 6, because the named 'base' variant means 12 text layers and fusion layers
  come on top of them. 256-d projections, temperature 0.07 (learnable, clamped to [0.001, 0.5]).
  About 210M params (tests/test_recipe_configs.py counts them). Text dropout 0.1 (BERT's);
  no dropout in the ViT (ALBEF's). Captions truncated to 25 tokens (ALBEF's Pretrain.py).
- Momentum model (EMA 0.995), a 65,536-entry queue (128 global batches), distillation
  alpha 0.4 ramped up over the first epoch; ITM negatives sampled from softmax(sim / temp) at the
  learned temperature (ALBEF's code); MLM 15%.
- Batch 512 (ALBEF: 8 GPUs x 64), AdamW lr 1e-4, weight decay 0.02 (matrices only, as
  ALBEF's timm optimizer), no gradient clipping, Adam b2 0.999 (torch's default).
  ALBEF warms up from 1e-5 over 2,000 iterations in the first epoch and decays per epoch by
  cosine to 1e-5 over 30 epochs; here: linear warmup from 0 over 2,000 steps, per-step cosine
  to lr * 0.1 = 1e-5 at the last step.
- 30 epochs of ALBEF's "4M" set. Steps per epoch assume 4,000,000 pairs
  (data.shapes.train_size): 4,000,000 // 512 = 7,812 steps, 234,360 in all. ALBEF's annotation
  lists hold ~5.1M captions for the 4.0M images (COCO, VG, CC3M, SBU), so its literal epoch
  is ~1.28x longer; on a real source the epoch is that source's length.
- Data: by default the synthetic shapes world rendered at 256 px (data.shapes.train_size is the
  4M pairs, so epochs have ALBEF's length). Real pairs: records prepared by
  `python -m vlp_jax.data.prepare` (--config.data.name=records --config.data.records.path=DIR) or a
  TFDS set (--config.data.name=tfds, e.g. coco_captions); see docs/data.md.
- Init: by default both towers start from scratch (or from model.init_checkpoint, a vlp_jax
  checkpoint of this architecture). ALBEF initialises them from DeiT-B/16 and bert-base-uncased;
  the pretrained-weights importer (models/importers.py) does the same from Hugging Face
  safetensors files, see below.
- Compute in bfloat16 (params and optimizer state stay float32); ALBEF trained in float32.
- Evaluation re-ranks each query's top 256 ITC candidates by ITM (ALBEF's k_test on COCO).

Pretrained init, as ALBEF (the keys below are overrides; the defaults above do not change):

    python -m vlp_jax.train --config configs/albef.py --workdir workdirs/albef_pretrained \
      --config.model.text.init=PATH/bert-base-uncased/model.safetensors \
      --config.model.text.pre_norm=False --config.model.text.type_vocab_size=2 \
      --config.model.text.max_positions=512 --config.model.text.vocab_size=30522 \
      --config.model.text.ln_eps=1e-12 --config.model.text.activation=gelu \
      --config.model.vision.init=PATH/vit/model.safetensors --config.model.vision.ln_eps=1e-12

- Text: bert-base-uncased's 12 layers fill the 6 text layers (file layers 0-5) and the 6 fusion
  layers' self-attention, MLP and LayerNorms (file layers 6-11); the fusion layers'
  cross-attention starts fresh, as in ALBEF. The Hub's file (BertForMaskedLM: 'bert.' prefix,
  LayerNorm gamma/beta) is read as is; its MLM head (cls.predictions.*: transform.dense,
  transform.LayerNorm, bias) fills the fusion model's MLM head, as in ALBEF (the decoder stays
  tied to the word embeddings; the bias is padded as the word table is), and its pooler is
  listed as not imported. The run prints the mapping, 'left fresh: the cross-attention of fusion
  layers 0-5' and 'MLM head from cls.predictions.*'. Post-LN (pre_norm=False),
  token types, 512 positions, the vocabulary, eps 1e-12 and exact GELU are what BERT's weights
  compute with (ln_eps and activation are the defaults already); a file or config.json that
  disagrees is one line naming the key to set. A file of 6 layers fills the text layers alone;
  any other layer count is refused before anything is written.
- Image: a Hugging Face ViT file (ViTModel, or ViTForImageClassification's 'vit.' prefix), e.g.
  google/vit-base-patch16-224-in21k, or facebook/deit-base-patch16-224 (non-distilled DeiT,
  which the Hub stores in the ViT layout; ALBEF's DeiT-B/16). The distilled DeiT (DeiTModel,
  with a distillation token) has no layout here. The model stays at 256 px: the file's 224-px
  position embeddings (14x14 patches + [CLS]) are interpolated to 16x16 as ALBEF does (class row
  kept, patch grid resized bicubically as torch's F.interpolate), and the run prints 'position
  embeddings interpolated from 14x14 to 16x16 (bicubic)'. The patch size must match (16); ln_eps
  is the one the file's config.json gives (the import names it when it differs).

Tiny (`:tiny`), the same recipe on the synthetic world's NOISY regime (configs/shapes_noisy.py),
minutes on 2 CPU cores: configs/shapes_albef.py's tiny fusion model (2 text layers + 1 fusion
layer), batch 128, plus the momentum model (0.995, alpha 0.4 over the first epoch) and a
queue of 1,280 (10 batches); ITM re-ranks the top 16.

    python -m vlp_jax.train --config configs/albef.py:tiny --workdir workdirs/albef_tiny

Arg: `tiny` selects the tiny variant; `steps=N` sets total_steps (e.g. `:tiny,steps=300`).
No arg = full size.
"""

from vlp_jax.config import default_config, parse_arg
from vlp_jax.config_files import from_sibling

BATCH_SIZE = 512
TRAIN_PAIRS = 4_000_000  # ALBEF's "4M": COCO + VG + CC3M + SBU (see the docstring)
EPOCHS = 30
STEPS_PER_EPOCH = TRAIN_PAIRS // BATCH_SIZE  # 7,812
QUEUE_SIZE = 65_536
TINY_QUEUE_SIZE = 1280


def enable_momentum(config, queue_size: int):
    """ALBEF's momentum model, queue and distillation."""
    config.loss.momentum.enabled = True
    config.loss.momentum.decay = 0.995
    config.loss.momentum.distill_alpha = 0.4
    config.loss.momentum.alpha_ramp_steps = -1  # the first epoch, as ALBEF
    config.loss.momentum.queue_size = queue_size
    return config


def full_config(steps: int):
    """ALBEF's pretraining recipe at full size: every value that differs from the schema's defaults."""
    config = default_config()
    config.objective = 'albef'
    config.batch_size = BATCH_SIZE
    config.total_steps = steps
    config.log_every = 100
    config.eval_every = STEPS_PER_EPOCH
    config.checkpoint_every = 1000

    optim = config.optim
    optim.lr = 1e-4
    optim.warmup_steps = 2000  # ALBEF: 20 warmup stages of 100 iterations
    optim.min_lr_ratio = 0.1  # min_lr 1e-5
    optim.weight_decay = 0.02
    optim.grad_clip = 0.0
    optim.adam_b2 = 0.999

    model = config.model
    model.kind = 'fusion'
    model.image_size = 256
    model.max_text_len = 25
    model.embed_dim = 256
    model.dtype = 'bfloat16'
    model.vision.update(dict(variant='B', patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072))
    # 'custom', not 'base': BERT-base's 12 layers = 6 text layers + 6 fusion layers.
    model.text.update(dict(variant='custom', width=768, depth=6, num_heads=12, mlp_dim=3072, dropout=0.1))
    model.text.fusion_layers = 6

    config.data.shapes.train_size = TRAIN_PAIRS
    config.data.crop_scale = (0.2, 1.0)  # ALBEF's RandomResizedCrop(256, scale=(0.2, 1.0))
    config.data.workers = 8

    config.loss.itm.negatives = 'sample'
    config.loss.mlm.mask_ratio = 0.15
    enable_momentum(config, QUEUE_SIZE)
    config.eval.rerank_k = 256  # ALBEF's k_test on COCO (128 on Flickr30K)
    return config


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=0)
    if args.tiny:  # configs/shapes_albef.py (tiny fusion model, noisy regime) + the momentum model
        return enable_momentum(from_sibling(__file__, 'shapes_albef.py', f'steps={args.steps or 600}'), TINY_QUEUE_SIZE)
    return full_config(args.steps or EPOCHS * STEPS_PER_EPOCH)  # 234,360
