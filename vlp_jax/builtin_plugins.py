"""The built-in plug-ins, registered by importing their modules (vlp_jax/registry.py).

Entry points (train, evaluate, the library API, config loading) import this module, so every
built-in objective, regulator, sampler, source, evaluator and tower, and its config group, is
known before a config is read. A user's plug-ins come in through the `plugins` config key.
"""

import vlp_jax.data.tasks.record_tasks  # noqa: F401  fine-tuning task sources on prepared records
from vlp_jax.data import fashion_mnist_source, record_source, synthetic_source, tfds_source  # noqa: F401  sources
from vlp_jax.data.tasks import shapes_grounding, shapes_tasks  # noqa: F401  fine-tuning task sources
from vlp_jax.data.tasks import shapes_vqa as shapes_vqa_source  # noqa: F401  VQA: source, objective, evaluator
from vlp_jax.evaluators import captioning, classification, grounding, retrieval, tasks  # noqa: F401  evaluators
from vlp_jax.evaluators import vqa as vqa_evaluator  # noqa: F401
from vlp_jax.models import towers  # noqa: F401  towers
from vlp_jax.objectives import albef, blip, dual_encoder, finetune  # noqa: F401  objectives
from vlp_jax.objectives import captioning as captioning_objective  # noqa: F401  objective
from vlp_jax.objectives import vqa as vqa_objective  # noqa: F401
from vlp_jax.objectives.regulators import cosmo, smoothing, srcl  # noqa: F401  regulators
from vlp_jax.sampling import grit_sampler, random_sampler  # noqa: F401  samplers
