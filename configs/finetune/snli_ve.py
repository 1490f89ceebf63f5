"""SNLI-VE fine-tuning (ALBEF VE.py): premise image, hypothesis text, 3 classes; ALBEF's 2-layer cls_head on
the fused [CLS] (model.head='mlp'), cross-entropy (objective 'snli_ve'); eval/snli_ve/accuracy.

    python -m vlp_jax.train --config configs/finetune/snli_ve.py:tiny --workdir workdirs/snli_ve_tiny \
      --config.model.init_checkpoint=workdirs/pre_tiny

Full size: configs/albef.py's model at 384 px, batch 256, lr 2e-5, 5 epochs (ALBEF's VE.yaml). Args as
configs/finetune/retrieval.py (`tiny`, `steps=N`, `init=PATH`). The tiny task: source 'shapes_snli_ve'
(data/tasks/shapes_tasks.py).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=-1, init='')
    retrieval = from_sibling(__file__, 'retrieval.py', 'tiny,distill=0' if args.tiny else 'distill=0')
    config = retrieval  # the same base model and fine-tuning settings
    config.objective = 'snli_ve'
    config.data.name = 'shapes_snli_ve'
    config.model.head = 'mlp'
    config.model.head_classes = 3
    config.eval.rerank_k = 0
    if args.init:
        config.model.init_checkpoint = args.init
    if args.steps > 0:
        config.total_steps = config.eval_every = config.checkpoint_every = args.steps
    if not args.tiny:
        config.optim.lr = 2e-5
        if args.steps <= 0:  # 5 epochs of SNLI-VE's 529,527 training pairs at batch 256
            config.total_steps = 5 * (529_527 // 256)
            config.eval_every = config.checkpoint_every = config.total_steps // 5
    return config
