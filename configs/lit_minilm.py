"""LiT on real photos: all-MiniLM-L6-v2 as a locked text tower, an image tower trained to match it,
on Fashion-MNIST (70,000 real 28x28 photos of 10 clothing classes), evaluated zero-shot on its test
split with prompt templates the training captions never used.

    python -m vlp_jax.data.fashion_mnist data/fashion_mnist --split train
    python -m vlp_jax.data.fashion_mnist data/fashion_mnist --split test
    python -m vlp_jax.data.prepare data/fashion_mnist/train.csv data/fashion_mnist_train \
        --class_names data/fashion_mnist/classes.txt
    python -m vlp_jax.data.prepare data/fashion_mnist/test.csv data/fashion_mnist_test \
        --class_names data/fashion_mnist/classes.txt
    python -m vlp_jax.train --config configs/lit_minilm.py --workdir workdirs/lit_minilm

The text tower (MiniLM, imported by configs/minilm_text.py) is locked (`optim.frozen`): no update, no
optimizer state. Its projection and the whole image tower train. Training captions come from
fashion_mnist.TRAIN_TEMPLATES; `eval.prompt_templates` are its held-out EVAL_TEMPLATES, so the zero-shot
top-1 (`eval/zeroshot/fashion_mnist/top1`) measures prompts the model never saw. Arg (optional):
steps=N (default 300). The data paths are relative to where the command runs.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling
from vlp_jax.data.fashion_mnist import EVAL_TEMPLATES

IMAGE_SIZE = 32  # 28 px photos, resized up a little so that 4 px patches tile them
TRAIN_DIR = 'data/fashion_mnist_train'
TEST_DIR = 'data/fashion_mnist_test'


def get_config(arg=None):
    args = parse_arg(arg, steps=300)
    config = from_sibling(__file__, 'minilm_text.py', f'steps={args.steps}')
    config.optim.frozen = 'text/.*'  # MiniLM stays as imported; text_proj and the image side train
    config.data.name = 'records'
    config.data.records.path = TRAIN_DIR
    config.data.records.eval_path = TEST_DIR
    config.data.flip = 'always'  # a mirrored garment is the same garment
    config.model.image_size = IMAGE_SIZE
    config.model.vision.patch_size = 4
    config.eval.prompt_templates = EVAL_TEMPLATES
    config.eval.sets = (f'fashion_mnist=classification:records:{TEST_DIR}',)
    config.eval.classification_size = 10000
    config.eval_every = 100
    return config
