"""Weakly-supervised grounding (ALBEF Grounding.py): trained on box-free (image, text) pairs with ITC + ITM
(objective 'retrieval_ft'), evaluated by Grad-CAM (evaluator 'grounding', evaluators/grounding.py): one fusion
layer's cross-attention probabilities x the clamped gradient of the ITM match logit, averaged over heads and
text tokens, upsampled to the image; each proposal box scored by the map; accuracy at IoU >= 0.5
(eval/grounding/accuracy).

    python -m vlp_jax.train --config configs/finetune/grounding.py:tiny --workdir workdirs/grounding_tiny \
      --config.model.init_checkpoint=workdirs/pre_tiny

The tiny task (source 'shapes_grounding'): trained on the shapes world's captions with image ids; tested on
referring expressions ("the red circle") naming one object of a scene of 2-3 objects, its grid cell the box,
every object's cell a proposal (chance: the mean of 1 / objects). `eval.gradcam_block` picks the layer
(ALBEF's block_num 8 = its third fusion layer; default here: the last). Args as configs/finetune/retrieval.py.
"""

from vlp_jax.config import parse_arg
from vlp_jax.config_files import from_sibling


def get_config(arg=None):
    args = parse_arg(arg, tiny=False, steps=-1, init='')
    config = from_sibling(__file__, 'retrieval.py', 'tiny,distill=0' if args.tiny else 'distill=0')
    config.data.name = 'shapes_grounding'
    config.eval.rerank_k = 0
    if args.init:
        config.model.init_checkpoint = args.init
    if args.steps > 0:
        config.total_steps = config.eval_every = config.checkpoint_every = args.steps
    if not args.tiny:
        config.eval.gradcam_block = 2  # ALBEF's block_num 8 of BERT's 12 layers: fusion layer 2 of 6
    return config
