"""Weakly-supervised grounding by Grad-CAM (ALBEF Grounding.py + grounding_eval), evaluator 'grounding'.

For each (image, referring expression): the ITM match logit is differentiated with respect to one fusion
layer's cross-attention probabilities (`eval.gradcam_block`; ALBEF's `block_num`), and

    gradcam = mean over heads and text positions of  probs[..., 1:] * clamp(grad[..., 1:], min=0) * text_mask

(ALBEF: "cams[:, :, :, 1:] ... * mask", "grads[:, :, :, 1:].clamp(min=0) ... * mask", "gradcam = cams * grads;
gradcam = gradcam.mean(1).mean(1)": the [CLS] image token dropped, the mean over all L text positions with the
padded ones zero) reshaped to the patch grid, upsampled to the image (bicubic; jax.image.resize's Keys cubic,
a = -0.5, where torch's F.interpolate uses a = -0.75), each proposal box scored by the mean of the map inside
it, the best proposal taken: a hit when its IoU with the referred box is >= 0.5. eval/grounding/accuracy.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.data.batch import normalise_images
from vlp_jax.data.sources import Source
from vlp_jax.data.tokenizer import shared_tokenizer
from vlp_jax.evaluators.base import EvalContext, EvalModel, Evaluator
from vlp_jax.evaluators.embedding import embed_in_batches
from vlp_jax.evaluators.specs import EvalSpec
from vlp_jax.models.vlp import VLPModel
from vlp_jax.registry import EVALUATORS

ITM_MATCH = 1
IOU_HIT = 0.5


def exposed_model(model: VLPModel, block: int) -> VLPModel:
    """The same model (same params) with fusion block `block` (negative: from the end) sowing its
    cross-attention probabilities and taking a perturbation of them (layers.MultiHeadAttention.expose)."""
    text = model.config.text
    depth = text.num_fusion_layers
    if not -depth <= block < depth or text.fusion_images != 1:
        raise ValueError(f'eval.gradcam_block {block} names no fusion layer of this one-image model ({depth} layers)')
    text = dataclasses.replace(text, expose_fusion_block=block % depth)
    return VLPModel(dataclasses.replace(model.config, text=text))


def _match(module: VLPModel, image, text_ids, text_mask):
    tokens = module.text_tokens(text_ids, text_mask)
    return module.itm_logits(module.fuse(tokens, text_mask, module.image_tokens(image)))[:, ITM_MATCH]


def attention_and_gradient(model: VLPModel, params, image, text_ids, text_mask):
    """(probs [B, heads, L, N], d sum(match logit) / d probs, same shape) of the exposed block."""
    variables = {'params': params}
    _, state = model.apply(variables, image, text_ids, text_mask, method=_match, mutable=['intermediates'])
    probs = jax.tree_util.tree_leaves(state['intermediates'])[0]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, {'probs': probs})

    def total(perturbation):
        path = _perturbation_tree(state['intermediates'], perturbation['probs'])
        return jnp.sum(model.apply({**variables, 'perturbations': path}, image, text_ids, text_mask, method=_match))

    return probs, jax.grad(total)(zeros)['probs']


def _perturbation_tree(intermediates, value):
    """The 'perturbations' collection mirroring where the probabilities were sown (one leaf; `sow` keeps a
    tuple of the values sown, the perturbation is the array itself)."""
    assert len(jax.tree_util.tree_leaves(intermediates)) == 1, 'one exposed attention'
    if isinstance(intermediates, tuple):
        return value
    return {name: _perturbation_tree(child, value) for name, child in intermediates.items()}


def gradcam(probs, grads, text_mask) -> jax.Array:
    """[B, N - 1] Grad-CAM over the image patches (ALBEF's formula, see the module docstring)."""
    mask = text_mask.astype(jnp.float32)[:, None, :, None]
    cam = probs[..., 1:] * mask * jnp.maximum(grads[..., 1:], 0.0) * mask
    return cam.mean(axis=1).mean(axis=1)


def box_scores(heat: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[P] mean of the map `heat` [H, W] inside each [x, y, w, h] box (ALBEF: sum over the box / its area);
    -inf for a padding row (negative width)."""
    scores = np.full(len(boxes), -np.inf)
    for n, (x, y, w, h) in enumerate(np.asarray(boxes)):
        if w > 0 and h > 0:
            scores[n] = heat[int(y) : int(y + h), int(x) : int(x + w)].sum() / (w * h)
    return scores


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def grounding_accuracy(maps: np.ndarray, boxes: np.ndarray, proposals: np.ndarray, image_size: int) -> float:
    """Share of examples whose best-scoring proposal (on the map upsampled to the image) has IoU >= 0.5 with the
    referred box. `maps` [B, g, g]."""
    hits = 0
    for heat, box, candidates in zip(maps, boxes, proposals):
        upsampled = np.asarray(jax.image.resize(jnp.asarray(heat), (image_size, image_size), 'bicubic'))
        best = candidates[int(np.argmax(box_scores(upsampled, candidates)))]
        hits += iou(best, box) >= IOU_HIT
    return hits / len(maps)


@EVALUATORS.register('grounding')
class GroundingEvaluator(Evaluator):
    """Grad-CAM grounding accuracy of a one-image fusion model on referring expressions with boxes."""

    def __init__(self, spec: EvalSpec, source: Source, context: EvalContext):
        super().__init__(spec, source, context)
        examples = source.batch(np.arange(len(source)))
        tokens = shared_tokenizer(context.max_text_len)([captions[0] for captions in examples['captions']])
        self.arrays = (normalise_images(examples['image']), tokens['text_ids'], tokens['text_mask'])
        self.boxes, self.proposals = examples['fields']['box'], examples['fields']['proposals']
        self.image_size = context.image_size
        self.block = int(context.settings.gradcam_block)
        self.name = spec.name or 'grounding'
        self._jitted = None

    def __call__(self, model: EvalModel) -> dict[str, float]:
        setup = model.setup
        if self._jitted is None:
            exposed = exposed_model(setup.model, self.block)

            def maps(params, image, ids, mask):
                with nn.logical_axis_rules(setup.rules):
                    probs, grads = attention_and_gradient(exposed, params, image, ids, mask)
                return gradcam(probs, grads, mask)

            self._jitted = jax.jit(maps)

        def call(*arrays):
            with jax.set_mesh(setup.mesh):
                return self._jitted(model.params, *arrays)

        cams = embed_in_batches(call, self.arrays, model.batch_size, model.mesh)
        side = int(round(np.sqrt(cams.shape[1])))
        maps = cams.reshape(len(cams), side, side)
        return {f'eval/{self.name}/accuracy': grounding_accuracy(maps, self.boxes, self.proposals, self.image_size)}
