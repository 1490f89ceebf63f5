"""Retrieval fine-tuning from a pretrained run (ALBEF Retrieval.py, configs/Retrieval_coco.yaml): objective
'retrieval_ft' (ITC with image-id positives + ITM with hard negatives, objectives/finetune.py), evaluated by
'retrieval_ft' (ITC top-k re-ranked by ITM: eval/retrieval_ft/{tr,ir}_r{1,5,10} and r_mean).

Full size (ALBEF's COCO recipe on configs/albef.py's model; the data is a prepared retrieval set):

    python -m vlp_jax.train --config configs/finetune/retrieval.py --workdir workdirs/retrieval_ft \
      --config.model.init_checkpoint=workdirs/albef --config.data.name=records_retrieval \
      --config.data.records_retrieval.path=DIR   # prepare --format retrieval (docs/data.md)

- image 384 px (the pretrained 256-px position table is interpolated), batch 256 (ALBEF: 8 x 32), AdamW
  lr 1e-5, weight decay 0.02, 5 epochs, k_test 256, ALBEF's score (eval.rerank_score='itm'; BLIP's
  'itm_itc' adds the ITC cosine), and ALBEF's momentum model: ITC against its keys and a 65,536-pair queue
  tagged with image ids, targets distilled at alpha 0.4 ramped over the first epoch (arg `distill=0` turns it
  off; objectives/retrieval_momentum.py).

Tiny (`:tiny`): the synthetic retrieval task (source 'shapes_retrieval', several captions per image, each
pair an example with its image id) on configs/shapes_albef.py's tiny fusion model, 300 steps at lr 3e-4, ITM
negatives drawn uniformly (not ALBEF's hard ones, which keep the tiny ITM head at its prior), started from a run
of that config:

    python -m vlp_jax.train --config configs/shapes_albef.py:steps=400 --workdir workdirs/pre_tiny \
      --config.batch_size=64 --config.data.shapes.caption_noise=0 --config.loss.itm.negatives=uniform
    python -m vlp_jax.train --config configs/finetune/retrieval.py:tiny --workdir workdirs/retrieval_tiny \
      --config.model.init_checkpoint=workdirs/pre_tiny

Args: `tiny`; `steps=N` (total_steps); `init=PATH` (= model.init_checkpoint); `distill=1|0` (the momentum
model: on by default at full size, off for `:tiny`, where `distill=1` keeps a 640-pair queue).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling

TINY_STEPS = 300  # about 90 s on a 2-core CPU; at 60-100 steps SNLI-VE and NLVR2 stayed at chance
TINY_QUEUE = 640  # 10 batches of 64


def finetune(config, args, objective: str, source: str):
    """Any fine-tuning config: the task's objective and source, no MLM, no momentum, no regulators."""
    config.objective = objective
    config.data.name = source
    config.loss.regulators = ()
    config.loss.momentum.enabled = False
    config.loss.momentum.queue_size = 0
    config.sampling.name = 'random'
    config.eval.sets = ('default',)
    if args.init:
        config.model.init_checkpoint = args.init
    if args.tiny:
        config.total_steps = args.steps if args.steps > 0 else TINY_STEPS
        config.batch_size = 64
        config.optim.lr = 3e-4
        config.optim.warmup_steps = 20
        config.eval_every = config.total_steps
        config.checkpoint_every = config.total_steps
        config.eval.classification_size = 300
        # Easy ITM negatives: ALBEF's hard ones keep a one-layer fusion model's ITM head at its all-negative
        # prior, and grounding's Grad-CAM follows that head (docs/results.md#why-itm-stays-at-its-prior).
        config.loss.itm.negatives = 'uniform'
    return config


def base(args):
    """The pretrained model's architecture: configs/shapes_albef.py's tiny model, or configs/albef.py's."""
    if args.tiny:
        return from_sibling(__file__, '../shapes_albef.py')
    config = from_sibling(__file__, '../albef.py')
    config.model.image_size = 384
    config.batch_size = 256
    config.optim.lr = 1e-5
    config.optim.warmup_steps = 0
    config.total_steps = args.steps if args.steps > 0 else 5 * (113_287 * 5 // 256)  # COCO Karpathy train
    config.eval_every = config.checkpoint_every = config.total_steps // 5
    return config


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=-1, init='', distill=-1)
    config = finetune(base(args), args, 'retrieval_ft', 'shapes_retrieval')
    config.eval.rerank_k = 16 if args.tiny else 256
    if args.distill == 1 or (args.distill == -1 and not args.tiny):  # ALBEF's Retrieval_coco.yaml
        config.loss.momentum.enabled = True
        config.loss.momentum.decay = 0.995
        config.loss.momentum.distill_alpha = 0.4
        config.loss.momentum.alpha_ramp_steps = -1
        config.loss.momentum.queue_size = TINY_QUEUE if args.tiny else 65_536
    return config
