"""A small dual encoder on Fashion-MNIST with written captions: a real-image regime where InfoNCE
learns within minutes on a CPU, and whose false negatives are known exactly.

Needs Debian's dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`: the idx files in
/usr/share/datasets/fashion-mnist) or `--config.data.fashion_mnist.directory=DIR`. Native 28 px,
4-px patches (49 tokens), the demo's towers; 12,800 training images (100 steps an epoch at batch
128, so GRIT's grouped epochs start early). Captions name the class or, with `granularity=group5`
or `group2`, a super-class: 10%, 22% or 52% of a batch's pairs are then false negatives.

    python -m vlp_jax.train --config configs/fashion_mnist.py --workdir workdirs/fashion_mnist
    python -m vlp_jax.train --config configs/fashion_mnist.py:granularity=group2,steps=300 --workdir ...

Arg (optional): steps=N (default 300), granularity=class|group5|group2 (default class).
Evaluates class-level retrieval (eval/retrieval/*_semantic_r1) and zero-shot top-1 with held-out
templates (eval/zeroshot/<granularity>/top1).
"""

from vlp_jax.config import default_config, parse_arg

TRAIN_SIZE = 12_800


def get_config(arg=None):
    args = parse_arg(arg, steps=300, granularity='class')
    config = default_config()
    config.total_steps = args.steps
    config.data.name = 'fashion_mnist'
    config.data.fashion_mnist.granularity = args.granularity
    config.data.fashion_mnist.train_size = TRAIN_SIZE
    config.model.image_size = 28
    config.model.vision.patch_size = 4
    config.eval_every = 100
    return config
