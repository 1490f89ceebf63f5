"""Why is Grad-CAM grounding at chance? Diagnostics on a finished fusion-model workdir (a grounding run or the
pretrained run itself), on the seed's synthetic grounding test set:

    PYTHONPATH=. .venv/bin/python experiments/grounding_diagnostics.py workdirs/experiments/transfer/pretrain_seed0

It prints the grounding accuracy of ALBEF's Grad-CAM map (the evaluator's), of its two factors alone (the
last fusion layer's cross-attention; the clamped gradient), of the map with the gradient's sign flipped, and of
a map that skips the fusion layer (each patch token through image_proj, cosine with the text embedding); then
whether the ITM match logit tells each image's own expression from another image's (AUC; 0.5 = it does not).
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax import config_files
from vlp_jax import setup as setup_lib
from vlp_jax.checkpointing import restore_params_from
from vlp_jax.data.batch import normalise_images
from vlp_jax.data.synthetic import ShapesWorld, ShapesWorldConfig
from vlp_jax.data.tasks.shapes_grounding import GroundingSource
from vlp_jax.data.tokenizer import shared_tokenizer
from vlp_jax.evaluators.grounding import _match, attention_and_gradient, exposed_model, gradcam, grounding_accuracy
from vlp_jax.paths import as_path

run = as_path(sys.argv[1])
config = config_files.saved_config(run, [])

setup = setup_lib.build(config, jax.devices()[:1])
params = restore_params_from(run, setup.abstract_state['params'])
size = int(config.model.image_size)
world = ShapesWorld(
    ShapesWorldConfig(
        image_size=size, captions_per_image=2, detail='coarse', train_size=4000, val_size=300, test_size=300
    ),
    int(config.seed),
    'test',
)
source = GroundingSource(world)
batch = source.batch(np.arange(len(source)))
tok = shared_tokenizer(int(config.model.max_text_len))([c[0] for c in batch['captions']])
image = normalise_images(batch['image'])
ids, mask = tok['text_ids'], tok['text_mask']
exposed = exposed_model(setup.model, -1)
with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    probs, grads = jax.jit(lambda p, a, b, c: attention_and_gradient(exposed, p, a, b, c))(params, image, ids, mask)
    match = jax.jit(lambda p, a, b, c: setup.model.apply({'params': p}, a, b, c, method=_match))
    own = np.asarray(match(params, image, ids, mask))
    perm = np.roll(np.arange(len(ids)), 1)
    other = np.asarray(match(params, image, ids[perm], mask[perm]))

    def patch_sim(module, image, ids, mask):
        tokens = module.vision(image, deterministic=True)[1][:, 1:]
        patches = module.image_proj(tokens)
        patches = patches / jnp.linalg.norm(patches, axis=-1, keepdims=True)
        text = module._text(ids, mask, True)[0]
        return jnp.einsum('bnd,bd->bn', patches, text)

    sim = np.asarray(
        jax.jit(lambda p, a, b, c: setup.model.apply({'params': p}, a, b, c, method=patch_sim))(
            params, image, ids, mask
        )
    )
side = int(round(np.sqrt(probs.shape[-1] - 1)))
m = np.asarray(mask, np.float32)[:, None, :, None]
maps = {
    'gradcam (ALBEF)': np.asarray(gradcam(probs, grads, mask)),
    'attention only': np.asarray((np.asarray(probs)[..., 1:] * m).mean(1).mean(1)),
    'clamped gradient only': np.asarray((np.maximum(np.asarray(grads)[..., 1:], 0) * m).mean(1).mean(1)),
    'negative gradient (sign flipped)': np.asarray(
        (np.asarray(probs)[..., 1:] * np.maximum(-np.asarray(grads)[..., 1:], 0) * m).mean(1).mean(1)
    ),
}
maps['ITC patch similarity (no fusion layer)'] = sim
for name, cams in maps.items():
    acc = grounding_accuracy(
        cams.reshape(len(cams), side, side), batch['fields']['box'], batch['fields']['proposals'], size
    )
    print(f'{name}: accuracy {acc:.3f}')
auc = np.mean(own[:, None] > other[None, :])
print(f"ITM match logit: own expression mean {own.mean():.3f}, another image's {other.mean():.3f}, AUC {auc:.3f}")
print('examples', len(source))
