"""Can the image tower see shape? Two probes on the shapes world's single-object images, one JSON line each.

    .venv/bin/python experiments/shape_probe.py --supervised --steps 1000 [--pool gap] [--patch 8]
    .venv/bin/python experiments/shape_probe.py --checkpoint WORKDIR_OR_STEP_DIR

--supervised trains the default tiny ViT (width 96, depth 3, 8-px patches at 64 px) with a linear head on
shape labels (fresh images every step) and prints its test accuracy every 50 steps: the tower's capacity to
learn shape when asked. --checkpoint fits a softmax regression on a trained run's image embeddings
(`vlp_jax.load`, 3,000 training images) for shape and for colour: what contrastive training put in them.
Both test on 500 images no training step saw; chance is 0.2 (shape) and 1/7 (colour).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from common import REPO

TEST_SEED, PROBE_TRAIN_SEED = 999, 5
TEST_SIZE, PROBE_TRAIN_SIZE, BATCH = 500, 3000, 128


def supervised(steps: int, pool: str, patch: int, lr: float = 1e-3) -> list[dict]:
    """Test accuracy of the tiny ViT + linear head trained on shape labels, every 50 steps."""
    sys.path.insert(0, REPO)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from vlp_jax.data.synthetic import SHAPES, ShapesWorldConfig, classification_set
    from vlp_jax.models.vit import ViT, ViTConfig

    world = ShapesWorldConfig()
    tower = ViTConfig(image_size=64, patch_size=patch, width=96, depth=3, num_heads=3, mlp_dim=256, pool=pool)

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, images):
            return nn.Dense(len(SHAPES))(ViT(tower)(images)[0])

    model = Classifier()
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps - 1), steps), weight_decay=0.05)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, images), labels).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def scaled(images):
        return images.astype(np.float32) / 127.5 - 1.0

    test = classification_set(world, TEST_SEED, TEST_SIZE, 'shape')
    rows, start = [], time.time()
    for i in range(steps):
        data = classification_set(world, 10 + i, BATCH, 'shape')
        order = np.random.default_rng(i).permutation(BATCH)  # labels are i % classes: mix them
        params, opt_state, loss = step(params, opt_state, scaled(data['image'][order]), data['label'][order])
        if (i + 1) % 50 == 0 or i + 1 == steps:
            accuracy = float((np.argmax(model.apply(params, scaled(test['image'])), -1) == test['label']).mean())
            rows.append({'step': i + 1, 'loss': round(float(loss), 4), 'shape accuracy': round(accuracy, 3)})
            print(json.dumps({**rows[-1], 'seconds': round(time.time() - start)}), flush=True)
    return rows


def softmax_regression(train_x, train_y, test_x, test_y, iterations: int = 2000, lr: float = 0.5) -> float:
    """Test accuracy of a standardised, lightly L2-regularised softmax regression fitted by gradient descent."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(train_y.max()) + 1
    weights, bias, targets = np.zeros((train_x.shape[1], classes)), np.zeros(classes), np.eye(classes)[train_y]
    for _ in range(iterations):
        logits = train_x @ weights + bias
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        grad = (probs - targets) / len(targets)
        weights -= lr * (train_x.T @ grad + 1e-4 * weights)
        bias -= lr * grad.sum(0)
    return float(((test_x @ weights + bias).argmax(1) == test_y).mean())


def linear_probe(checkpoint: str) -> dict:
    """Shape and colour linear-probe accuracy of a trained run's image embeddings."""
    sys.path.insert(0, REPO)
    import vlp_jax
    from vlp_jax.data.synthetic import ShapesWorldConfig, classification_set

    model = vlp_jax.load(checkpoint)
    world = ShapesWorldConfig(image_size=model.image_size)
    result = {'checkpoint': checkpoint}
    for attribute in ('shape', 'colour'):
        train = classification_set(world, PROBE_TRAIN_SEED, PROBE_TRAIN_SIZE, attribute)
        test = classification_set(world, TEST_SEED, TEST_SIZE, attribute)
        accuracy = softmax_regression(
            model.encode_images(train['image']), train['label'], model.encode_images(test['image']), test['label']
        )
        result[f'{attribute} linear probe'] = round(accuracy, 3)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--supervised', action='store_true', help='train the tiny ViT on shape labels')
    mode.add_argument('--checkpoint', help="a run's workdir or step directory: linear probes of its embeddings")
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--pool', choices=('cls', 'gap'), default='cls')
    parser.add_argument('--patch', type=int, default=8)
    args = parser.parse_args()
    if args.supervised:
        supervised(args.steps, args.pool, args.patch)
    else:
        linear_probe(args.checkpoint)


if __name__ == '__main__':
    main()
