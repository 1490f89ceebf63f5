"""The core config groups: the run, the optimizer, the model, the data, the mesh, evaluation, the loss.

Plug-ins declare the rest where they live (a regulator's `loss.<name>`, a sampler's
`sampling.<name>`, a source's `data.<name>`, ALBEF's `loss.itm`/`loss.mlm`/...). The
defaults are the laptop demo's: a tiny dual encoder on the built-in shapes world, so a
config file states only what differs.
"""

from __future__ import annotations

import dataclasses

from vlp_jax.config.schema import at_least, group, in_range, key, non_negative, positive, positive_int

BERT_VOCAB_SIZE = 30522  # bert-base-uncased's WordPiece vocabulary (the shipped one)
MESH_AXES = ('data', 'fsdp', 'model')
DEFAULT_MESH_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', None),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    ('vocab', 'model'),
    ('length', None),
    ('patch', None),
    ('proj', None),
)
DEFAULT_PROMPT_TEMPLATES = ('a photo of a {}.', 'a picture of a {}.', 'an image of a {}.')


@group('')
@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The run as a whole: what it learns, how long, and how often it reports and saves."""

    seed: int = key(0, 'seed of the init, the data order, the augmentations and dropout', check=non_negative)
    objective: str = key('contrastive', "what is learned (registry 'objective'): 'contrastive' | 'albef' | a plug-in")
    plugins: tuple = key((), 'modules imported before the config is checked: your own registered plug-ins')
    total_steps: int = key(600, 'optimizer steps of the run', check=positive_int, resume=True)
    batch_size: int = key(128, 'global batch size, over all devices and processes', check=positive_int)
    micro_batches: int = key(
        1,
        'GradCache accumulation: the batch embedded in this many micro-batches, negatives kept global',
        check=positive_int,
    )
    log_every: int = key(50, 'steps between log lines and metrics.jsonl records', check=positive_int, resume=True)
    eval_every: int = key(200, 'steps between evaluations', check=positive_int, resume=True)
    checkpoint_every: int = key(200, 'steps between checkpoints', check=positive_int, resume=True)
    keep_checkpoints: int = key(3, 'newest checkpoints kept; orbax deletes older ones', check=positive_int, resume=True)
    nonfinite_patience: int = key(
        10,
        'non-finite steps in a row (each skipped) that stop the run with exit status 3',
        check=positive_int,
        resume=True,
    )
    peak_flops_per_device: float = key(
        0.0,
        "train/mfu's denominator in FLOP/s; 0 = the device kind's table (CPU: measured)",
        check=non_negative,
        resume=True,
    )


@group('optim')
@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warmup and cosine decay; locked params and per-param learning rates (vlp_jax/optim.py)."""

    lr: float = key(1e-3, 'peak learning rate', check=positive)
    warmup_steps: int = key(100, 'linear warmup from 0 to lr over these steps', check=at_least(0))
    min_lr_ratio: float = key(0.05, 'the cosine decays to lr * min_lr_ratio at total_steps', check=in_range(0, 1))
    weight_decay: float = key(
        0.05, 'decoupled weight decay of matrices (never biases, norms, temperature)', check=non_negative
    )
    grad_clip: float = key(1.0, 'global-norm gradient clipping; 0 disables it', check=non_negative)
    adam_b2: float = key(0.98, "Adam's second-moment decay", check=in_range(0, 1, high_open=True))
    frozen: str = key('', "regex (full match) of param paths locked: no update, no optimizer state ('' = none)")
    lr_multipliers: tuple = key((), "((regex, multiplier), ...): the first match scales that param's update")


@group('model')
@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The whole model: the towers' shared space, its temperature, the compute dtype."""

    kind: str = key(
        'dual', "'dual': two towers | 'fusion': + fusion layers and ITM/MLM heads (ALBEF)", choices=('dual', 'fusion')
    )
    image_size: int = key(64, 'input image side in pixels (the data pipeline resizes to it)', check=positive_int)
    max_text_len: int = key(24, 'tokens per caption, [CLS] and [SEP] included', check=positive_int)
    embed_dim: int = key(64, 'width of the shared image-text space', check=positive_int)
    temperature_init: float = key(0.07, 'initial softmax temperature (learned, clamped)', check=positive)
    temperature_min: float = key(
        0.001, 'the temperature is clamped from below to this after every step', check=positive
    )
    temperature_max: float = key(0.5, '... and from above to this', check=positive)
    sigmoid_bias_init: float = key(-10.0, "SigLIP's learnable bias at init (loss.form='sigmoid')")
    proj_bias: bool = key(True, 'biases on the projections into the shared space (CLIP has none)')
    dtype: str = key(
        'float32', 'compute dtype; params and optimizer state stay float32', choices=('float32', 'bfloat16')
    )
    remat: str = key('none', "activation rematerialisation per block: 'none' | 'dots' | 'full'")
    scan: bool = key(False, "nn.scan over each tower's layers (one block compiled; stacked params)")
    init_checkpoint: str = key(
        '', "a vlp_jax run (workdir or checkpoint) a new run starts from: pretrained -> fine-tuned ('' = none)"
    )
    head: str = key(
        '',
        "a task head on the fused [CLS]: '' none | 'mlp' (ALBEF's cls_head: dense, ReLU, dense) | 'linear' "
        "(ALBEF's ta_head)",
        choices=('', 'mlp', 'linear'),
    )
    head_classes: int = key(2, "classes of model.head's output", check=at_least(2))


@group('model.vision')
@dataclasses.dataclass(frozen=True)
class VisionSettings:
    """The image tower (registry 'tower'); the built-in ViT reads every key below."""

    tower: str = key('vit', "the image tower's registered name")
    variant: str = key('custom', "'custom' reads width/depth/num_heads/mlp_dim; named sizes ('Ti'/'S'/'B'/'L') don't")
    patch_size: int = key(8, 'patch side in pixels', check=positive_int)
    width: int = key(96, 'token width', check=positive_int)
    depth: int = key(3, 'transformer blocks', check=positive_int)
    num_heads: int = key(3, 'attention heads', check=positive_int)
    mlp_dim: int = key(256, 'hidden width of each MLP', check=positive_int)
    dropout: float = key(
        0.0, 'dropout on attention, MLP and embeddings (training only)', check=in_range(0, 1, high_open=True)
    )
    remat: str = key('', "this tower's own remat policy ('' = model.remat)")
    pool: str = key('cls', "'cls' | 'gap': the pooled image token")
    pooler: bool = key(False, "HF ViT's tanh dense on the pooled token")
    pre_layernorm: bool = key(False, "LayerNorm before the blocks (CLIP's)")
    patch_bias: bool = key(True, 'bias on the patch embedding (CLIP has none)')
    activation: str = key('gelu', "MLP nonlinearity: 'gelu' | 'gelu_tanh' | 'quick_gelu'")
    ln_eps: float = key(1e-6, 'LayerNorm epsilon', check=positive)
    init: str = key('', "a Hugging Face safetensors file (ViT or CLIP layout) imported on a new run ('' = none)")


@group('model.text')
@dataclasses.dataclass(frozen=True)
class TextSettings:
    """The text tower (registry 'tower'); the built-in BERT-style transformer reads every key below."""

    tower: str = key('transformer', "the text tower's registered name")
    variant: str = key(
        'custom', "'custom' reads width/depth/num_heads/mlp_dim; named sizes ('tiny'/'mini'/'base') don't"
    )
    width: int = key(96, 'token width', check=positive_int)
    depth: int = key(2, 'text-only transformer layers', check=positive_int)
    num_heads: int = key(3, 'attention heads', check=positive_int)
    mlp_dim: int = key(256, 'hidden width of each MLP', check=positive_int)
    vocab_size: int = key(BERT_VOCAB_SIZE, 'word-embedding rows used (padded to a multiple of 128)', check=positive_int)
    fusion_layers: int = key(
        0, "ALBEF's fusion layers after the text layers (model.kind='fusion' needs > 0)", check=at_least(0)
    )
    fusion_images: int = key(
        1,
        'images each fusion layer sees: 2 = NLVR2 (each layer doubled, one per image, cross-attention K/V shared)',
        choices=(1, 2),
    )
    dropout: float = key(
        0.0, 'dropout on attention, MLP and embeddings (training only)', check=in_range(0, 1, high_open=True)
    )
    remat: str = key('', "this tower's own remat policy ('' = model.remat)")
    pre_norm: bool = key(True, 'pre-LN blocks; False = post-LN (BERT, MiniLM)')
    max_positions: int = key(0, 'position-table rows (0 = max_text_len; BERT: 512)', check=at_least(0))
    type_vocab_size: int = key(0, 'token-type rows (BERT: 2; row 0 is added to every token)', check=at_least(0))
    pool: str = key('cls', "'cls' | 'mean' | 'argmax' | 'last': the pooled text token")
    pooler: bool = key(False, "BERT's tanh dense on the pooled token")
    embed_norm: bool = key(True, 'LayerNorm on the embeddings (BERT: yes, CLIP: no)')
    causal: bool = key(False, "causal self-attention (CLIP's text tower)")
    activation: str = key('gelu', "MLP nonlinearity: 'gelu' | 'gelu_tanh' | 'quick_gelu'")
    ln_eps: float = key(1e-12, 'LayerNorm epsilon', check=positive)
    init: str = key('', 'a Hugging Face safetensors file (BERT/MiniLM or CLIP layout) imported on a new run')


INPUT_BACKENDS = ('auto', 'tf', 'numpy')  # data/backend.py resolves 'auto'


def _crop_scale(value) -> str | None:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and 0.0 < value[0] <= value[1] <= 1.0
    return None if ok else 'must be (low, high) with 0 < low <= high <= 1'


@group('data')
@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The training set (registry 'source') and the input pipeline."""

    name: str = key('shapes', "the training source: 'shapes' (built-in) | 'records' | 'tfds' | a plug-in")
    crop_scale: tuple = key(
        (0.8, 1.0), 'random resized crop: the fraction of the image area kept, (low, high)', check=_crop_scale
    )
    flip: str = key(
        'auto',
        "'auto': flip unless the caption says left/right | 'always' | 'never'",
        choices=('auto', 'always', 'never'),
    )
    workers: int = key(2, 'parallel host loading calls', check=positive_int, resume=True)
    prefetch: int = key(4, 'batches buffered ahead of the step', check=positive_int, resume=True)
    backend: str = key(
        'auto',
        "input path: 'tf' (tf.data) | 'numpy' (in-memory sources, no TensorFlow) | 'auto' (numpy when TF is absent)",
        choices=INPUT_BACKENDS,
        resume=True,
    )


@group('loss')
@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The contrastive loss every objective's ITC uses, and the regulators applied to it."""

    form: str = key('softmax', "'softmax' (InfoNCE) | 'sigmoid' (SigLIP)", choices=('softmax', 'sigmoid'))
    impl: str = key(
        'dense',
        "'dense': [B, B] logits | 'chunked': memory-bounded column tiles, same loss",
        choices=('dense', 'chunked'),
    )
    negatives: str = key(
        'global', "'global': the whole batch | 'local': each batch shard's own (GRIT-VLP)", choices=('global', 'local')
    )
    stop_grad_keys: bool = key(False, 'GRIT-VLP: i2t logits against sg(texts), t2i against sg(images)')
    consistency_weight: float = key(0.0, "GRIT-VLP's ITC consistency term (0.2 in the paper)", check=non_negative)
    regulators: tuple = key((), "registered regulators applied in order, e.g. ('srcl', 'cosmo'); () = plain")


@group('sampling')
@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Which sampler (registry 'sampler') orders the training examples, epoch by epoch."""

    name: str = key('random', "'random' | 'grit' (grouped hard-negative batches) | a plug-in")


@group('mesh')
@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """The device mesh and how logical axes map onto it."""

    data: int = key(-1, 'data-parallel axis size (-1: the devices left)')
    fsdp: int = key(1, 'FSDP axis size (params sharded where a rule maps a logical axis to it)')
    model: int = key(1, 'tensor-parallel axis size')
    local_shards: int = key(-1, "shards that 'local' sampling and negatives group within (-1: the batch shards)")
    rules: tuple = key(DEFAULT_MESH_RULES, '((logical axis, mesh axis or axes or None), ...)')


@group('eval')
@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What evaluation runs (registry 'evaluator') and on how much."""

    sets: tuple = key(('default',), "eval sets: 'default' and/or [NAME=]EVALUATOR:SOURCE[:WHERE]", resume=True)
    batch_size: int = key(
        256, 'examples per encoder call (a multiple of the batch shards)', check=positive_int, resume=True
    )
    retrieval_size: int = key(
        1000, 'at most this many images of a retrieval set, spread over it', check=positive_int, resume=True
    )
    classification_size: int = key(
        500, 'at most this many images of a classification set', check=positive_int, resume=True
    )
    prompt_templates: tuple = key(
        DEFAULT_PROMPT_TEMPLATES, "zero-shot class prompts, '{}' = the class name", resume=True
    )
    rerank_k: int = key(
        0,
        "fusion models: re-rank each query's top k ITC candidates by ITM (0 = ITC only)",
        check=at_least(0),
        resume=True,
    )
    gradcam_block: int = key(
        -1,
        "grounding: the fusion layer whose cross-attention Grad-CAM reads (ALBEF's block_num; negative: from the end)",
        resume=True,
    )
    rerank_score: str = key(
        'itm',
        "the re-ranked score of a top-k candidate: 'itm' (ALBEF: the ITM match logit) | 'itm_itc' (BLIP: the "
        'match logit plus the ITC cosine)',
        choices=('itm', 'itm_itc'),
        resume=True,
    )
