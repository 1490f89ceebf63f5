"""Tiny dual encoder on the built-in captioned-shapes world: the laptop demo.

Sized to train in a few minutes on 2 CPU cores and reach zero-shot retrieval far
above chance. Arg (optional): a number of training steps, e.g. `:200`.
"""

import ml_collections

from vlp_jax.data.tokenizer import BERT_VOCAB_SIZE

IMAGE_SIZE = 64
MAX_TEXT_LEN = 24


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = int(arg) if arg else 600
    config.batch_size = 128  # global, over all devices
    config.log_every = 50
    config.eval_every = 200
    config.checkpoint_every = 200
    config.keep_checkpoints = 3
    config.lr = 1e-3
    config.warmup_steps = 100
    config.min_lr_ratio = 0.05  # cosine decays to lr * min_lr_ratio
    config.weight_decay = 0.05
    config.grad_clip = 1.0  # global-norm clipping; 0 disables it
    config.adam_b2 = 0.98
    # A step with a non-finite loss, gradient or update is skipped (train/skipped_steps); this many
    # in a row stop the run with exit status 3 (its checkpoints stay finite).
    config.nonfinite_patience = 10
    # Gradient accumulation over this many micro-batches with the negatives kept global (GradCache: the
    # loss and its gradient w.r.t. the embeddings over the whole batch, then back-propagation micro-batch
    # by micro-batch). Activation memory is one micro-batch's; the gradient equals the full batch's.
    # Dual encoders only; it must divide each batch shard's rows.
    config.micro_batches = 1
    # train/mfu's denominator: FLOP/s per device; 0 = the dense bf16 peak of the device kind from the
    # table in vlp_jax/mfu.py (CPU: measured with a matmul at the first log step).
    config.peak_flops_per_device = 0.0

    config.model = ml_collections.ConfigDict()
    config.model.image_size = IMAGE_SIZE
    config.model.max_text_len = MAX_TEXT_LEN
    config.model.embed_dim = 64
    config.model.temperature_init = 0.07
    config.model.dtype = 'float32'
    config.model.kind = 'dual'  # 'dual': two towers | 'fusion': + text.fusion_layers, ITM and MLM heads (ALBEF)
    # variant 'custom' reads width/depth/num_heads/mlp_dim; named sizes (ViT 'Ti'/'S'/'B'/'L',
    # text 'tiny'/'mini'/'base') ignore them. dropout: on attention, MLP and embeddings, training only.
    config.model.vision = ml_collections.ConfigDict(
        dict(variant='custom', patch_size=8, width=96, depth=3, num_heads=3, mlp_dim=256, dropout=0.0)
    )
    config.model.text = ml_collections.ConfigDict(
        dict(variant='custom', width=96, depth=2, num_heads=3, mlp_dim=256, vocab_size=BERT_VOCAB_SIZE, dropout=0.0)
    )
    # Activation rematerialisation per block ('none' | 'dots' | 'full': see models/layers.REMAT_POLICIES);
    # model.vision.remat / model.text.remat ('' = this one) set a tower its own. model.scan: nn.scan over
    # each tower's layers (one block compiled, not depth; stacked params, so its checkpoints differ).
    config.model.remat = 'none'
    config.model.vision.remat = ''
    config.model.text.remat = ''
    config.model.scan = False
    config.model.text.fusion_layers = 0  # ALBEF: text layers then fusion layers cross-attending to the image
    # Architecture options (the defaults are vlp_jax's own towers); imported weights need their layout's
    # values, and models/importers.py names the key to set when they differ. Text: pre_norm (False = post-LN,
    # BERT), max_positions (position rows, 0 = max_text_len), type_vocab_size (BERT: 2; row 0 is added),
    # pool 'cls'|'mean'|'argmax'|'last', pooler (BERT's tanh dense), embed_norm (LayerNorm on the
    # embeddings), causal (CLIP), activation 'gelu'|'gelu_tanh'|'quick_gelu', ln_eps.
    config.model.text.update(
        dict(
            pre_norm=True,
            max_positions=0,
            type_vocab_size=0,
            pool='cls',
            pooler=False,
            embed_norm=True,
            causal=False,
            activation='gelu',
            ln_eps=1e-12,
        )
    )
    # Vision: pool 'cls'|'gap', pooler (HF ViT's tanh dense), pre_layernorm (CLIP), patch_bias, activation, ln_eps.
    config.model.vision.update(
        dict(pool='cls', pooler=False, pre_layernorm=False, patch_bias=True, activation='gelu', ln_eps=1e-6)
    )
    config.model.proj_bias = True  # biases on the projections into the shared space (CLIP has none)
    # Pretrained weights (models/importers.py): a Hugging Face safetensors file whose layout (BERT/MiniLM,
    # ViT or CLIP) is read from its keys, imported into the tower after init on a new run ('' = none).
    config.model.text.init = ''
    config.model.vision.init = ''
    # A vlp_jax checkpoint whose params initialise this model where path and shape match (e.g. a dual
    # encoder's towers for a fusion model, whose fusion layers and heads stay fresh); '' = random init.
    config.model.init_checkpoint = ''

    config.data = ml_collections.ConfigDict()
    config.data.name = 'shapes'
    config.data.image_size = IMAGE_SIZE
    config.data.max_text_len = MAX_TEXT_LEN
    config.data.captions_per_image = 2
    config.data.caption_noise = 0.0
    config.data.detail = 'mixed'
    config.data.train_size = 50_000
    config.data.val_size = 500
    config.data.test_size = 1000
    config.data.crop_scale = (0.8, 1.0)  # random resized crop: fraction of the image area kept
    config.data.flip = 'auto'  # 'auto': flip only when the caption has no left/right words
    config.data.workers = 2  # parallel host loading calls
    config.data.prefetch = 4  # batches buffered ahead of the step

    config.loss = ml_collections.ConfigDict()
    config.loss.form = 'softmax'  # 'softmax' (InfoNCE) | 'sigmoid' (SigLIP)
    # 'dense': [B, B] logits | 'chunked': column blocks travelling between devices, memory bounded at
    # any global batch (objectives/chunked/); the same loss, gradients and regulators.
    config.loss.impl = 'dense'
    config.loss.stop_grad_keys = False  # GRIT-VLP: i2t logits against sg(texts), t2i against sg(images)
    config.loss.consistency_weight = 0.0  # GRIT-VLP's ITC consistency term (0.2 in the paper)
    config.loss.negatives = 'global'  # 'global': the whole batch | 'local': each batch shard's own (GRIT-VLP)
    config.model.sigmoid_bias_init = -10.0  # SigLIP's init; used by loss.form='sigmoid'
    # Regulators applied in this order (any subset): 'srcl' (weights on negatives),
    # 'cosmo' (converts the hardest negative to a positive, smooths targets), 'smoothing'
    # (uniform label smoothing alone; not with 'cosmo', which smooths by loss.cosmo.eps).
    # () = plain InfoNCE / SigLIP. See docs/methods.md (SRCL, COSMO/MAFA).
    config.loss.regulators = ()
    config.loss.srcl = ml_collections.ConfigDict(
        dict(
            alpha_start=1.0,  # weight of the reference model's similarity at the start
            alpha_end=0.0,  # ... and after alpha_decay_end
            alpha_decay_start=0,  # step where alpha starts moving
            alpha_decay_end=-1,  # step where it reaches alpha_end; -1 = total_steps
            alpha_shape='linear',  # 'linear' | 'cosine'
            tau_w=1.0,  # temperature of the weights' exp(sim / tau_w)
            w_min=0.0,  # negatives with weight < w_min are dropped; 0 = off
            reference_checkpoint='',  # frozen reference model (a workdir, checkpoints/ or step dir)
        )
    )
    config.loss.cosmo = ml_collections.ConfigDict(
        dict(
            # 'cosine': q = a frozen model's image-text cosine (any kind); 'itm': q = a frozen fusion
            # model's ITM match probability of (anchor, hardest negative) (MAFA)
            discriminator='cosine',
            high=0.8,  # discriminator score above this: the hardest negative is converted
            low=0.5,  # below this it stays a negative (between: dropped, for ITM)
            eps=0.5,  # label smoothing of the targets from smoothing_start_step on
            smoothing_start_step=-1,  # -1: the first step of epoch 1 (MAFA: once GRIT's grouped batches start)
            reference_checkpoint='',  # the discriminator's frozen model (may equal loss.srcl's)
        )
    )
    # Uniform smoothing alone, with COSMO's eps and start: the ablation that separates conversion from smoothing.
    config.loss.smoothing = ml_collections.ConfigDict(dict(eps=0.5, start_step=-1))
    # ALBEF (model.kind='fusion'): loss = itc * ITC + itm * ITM + mlm * MLM.
    config.loss.weights = ml_collections.ConfigDict(dict(itc=1.0, itm=1.0, mlm=1.0))
    config.loss.itm = ml_collections.ConfigDict(dict(negatives='sample'))  # 'sample' (ALBEF) | 'hardest' (GRIT-VLP)
    # mask_ratio: 0.15 ALBEF/SRCL, 0.5 GRIT-VLP/MAFA. max_predictions: at most this many predicted tokens per
    # caption reach the word logits (BERT's max_predictions_per_seq); -1 derives it from mask_ratio and
    # max_text_len so that a caption exceeds it with probability < 1e-4 (objectives/matching.py); 0 scores
    # every position.
    config.loss.mlm = ml_collections.ConfigDict(dict(mask_ratio=0.15, max_predictions=-1))
    # ALBEF's momentum model (fusion only): EMA copies of all params; ITC's candidates become the momentum
    # embeddings of the batch and of a queue of past batches, and targets mix in the momentum model's
    # softmax (distillation, ITC and MLM): y = alpha * softmax(sim_m) + (1 - alpha) * y.
    config.loss.momentum = ml_collections.ConfigDict(
        dict(
            enabled=False,
            decay=0.995,  # EMA: m <- decay * m + (1 - decay) * params, after every update
            distill_alpha=0.4,  # ALBEF's alpha; 0 turns distillation off
            alpha_ramp_steps=-1,  # alpha rises linearly from 0 over these steps; -1 = the first epoch (ALBEF)
        )
    )
    # Momentum features of past batches kept as extra ITC candidates (ALBEF: 65,536); a multiple of batch_size.
    config.loss.queue_size = 0

    config.sampling = ml_collections.ConfigDict()
    config.sampling.name = 'random'  # 'random' | 'grit' (grouped hard-negative batches from the last epoch)
    config.sampling.queue_size = 6400  # GRIT: entries grouped per queue fill; a multiple of search_space
    config.sampling.search_space = 1280  # GRIT: entries per greedy chain; a multiple of batch_size
    config.sampling.scope = 'global'  # 'global': one order for the global batch | 'local': per batch shard

    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # Shards that sampling.scope=local and loss.negatives=local group within (GRIT-VLP's per-GPU
    # batches): -1 = the mesh's batch shards; N emulates N devices' shards on any device count.
    config.mesh.local_shards = -1
    # logical axis -> mesh axis (or None = replicated). Data parallel by default;
    # FSDP: embed -> 'fsdp'; tensor parallel: mlp/heads/vocab -> 'model'.
    config.mesh.rules = (
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

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256  # a multiple of the device count (8 fake CPU devices included)
    config.eval.classification_size = 500
    # Fusion models: also re-rank each query's top-k ITC candidates by the ITM head (ALBEF's k_test); 0 = ITC only.
    config.eval.rerank_k = 0
    return config
