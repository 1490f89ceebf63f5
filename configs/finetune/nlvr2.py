"""NLVR2 fine-tuning (ALBEF NLVR.py, models/model_nlvr.py): a statement about two images, true or false. Each
fusion layer is doubled (model.text.fusion_images=2: the first of a pair cross-attends to image 0, the second
to image 1, their key/value projections shared), both initialised from the pretrained layer; ALBEF's 2-layer
cls_head on [CLS] (objective 'nlvr2'); eval/nlvr2/accuracy.

    python -m vlp_jax.train --config configs/finetune/nlvr2.py:tiny --workdir workdirs/nlvr2_tiny \
      --config.model.init_checkpoint=workdirs/pre_tiny

Full size: configs/albef.py's model, batch 128 (ALBEF: 8 x 16), lr 2e-5, 10 epochs. Args as
configs/finetune/retrieval.py, plus `stage=ta`: ALBEF's text-assignment pre-stage (Pretrain_nlvr.py, objective
'nlvr2_ta'): the paired fusion layers and a linear 3-way ta_head trained on captioned images (tiny: the shapes
world's caption pairs, 'shapes_retrieval'; eval/nlvr2_ta/accuracy on its test images), a run that the NLVR2 stage
then starts from (`init=` its workdir; the ta_head is left behind, the cls_head starts fresh):

    python -m vlp_jax.train --config configs/finetune/nlvr2.py:tiny,stage=ta,init=workdirs/pre_tiny \
      --workdir workdirs/nlvr2_ta_tiny
    python -m vlp_jax.train --config configs/finetune/nlvr2.py:tiny,init=workdirs/nlvr2_ta_tiny \
      --workdir workdirs/nlvr2_tiny

The tiny task: source 'shapes_nlvr2' (data/tasks/shapes_tasks.py).
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=-1, init='', stage='nlvr2')
    if args.stage not in ('nlvr2', 'ta'):
        raise ValueError(f"configs/finetune/nlvr2.py arg stage must be 'nlvr2' or 'ta', got {args.stage!r}.")
    config = from_sibling(__file__, 'retrieval.py', 'tiny,distill=0' if args.tiny else 'distill=0')
    pretraining_data = config.data.name
    config.objective = 'nlvr2'
    config.data.name = 'shapes_nlvr2'
    config.model.head = 'mlp'
    config.model.head_classes = 2
    config.model.text.fusion_images = 2
    config.eval.rerank_k = 0
    if args.stage == 'ta':  # ALBEF Pretrain_nlvr.py: lr 2e-5 (full size), 1 epoch of the pretraining pairs
        config.objective = 'nlvr2_ta'
        config.data.name = 'shapes_retrieval' if args.tiny else pretraining_data  # any captioned images
        config.model.head = 'linear'
        config.model.head_classes = 3
        config.eval.sets = (f'nlvr2_ta=text_assignment:{config.data.name}',)
    if args.init:
        config.model.init_checkpoint = args.init
    if args.steps > 0:
        config.total_steps = config.eval_every = config.checkpoint_every = args.steps
    if not args.tiny:
        config.batch_size = 128
        config.optim.lr = 2e-5
        if args.steps <= 0:  # 10 epochs of NLVR2's 86,373 training statements at batch 128
            config.total_steps = 10 * (86_373 // 128)
            config.eval_every = config.checkpoint_every = config.total_steps // 10
    return config
