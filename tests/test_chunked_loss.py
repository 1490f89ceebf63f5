"""The chunked global-batch loss equals the dense regulator chain + contrastive loss: loss, gradients, metrics.

Every regulator combination, softmax and sigmoid, on 1 device (several column chunks) and on 8 fake
CPU devices (a subprocess; data=4 x fsdp=2, ring and all-gather), to 1e-5.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.objectives.chunked import chunked_contrastive_loss
from vlp_jax.objectives.contrastive import Regulation, contrastive_loss
from vlp_jax.objectives.frozen import ITM, image_text_cosines
from vlp_jax.objectives.regulators import (
    DISCRIMINATOR,
    REFERENCE,
    Cosmo,
    CosmoSettings,
    RegulatorChain,
    RegulatorContext,
    Smoothing,
    SmoothingSettings,
    Srcl,
    SrclSettings,
)

BATCH, EMBED, STEP = 32, 8, 5
TOLERANCE = 1e-5

CONTEXT = RegulatorContext(batch_size=BATCH, total_steps=10, steps_per_epoch=10, loss_form='softmax', model_kind='dual')
SRCL = SrclSettings(alpha_start=1.0, alpha_end=0.0, alpha_decay_end=10, tau_w=0.5, w_min=0.6)  # alpha = 0.5 at STEP
SRCL_NO_REFERENCE = SrclSettings(alpha_start=0.0, alpha_end=0.0, alpha_decay_end=1, tau_w=1.0)
COSMO = CosmoSettings(high=0.45, low=0.2, eps=0.3, smoothing_start_step=0)  # thresholds in cosine units
COSMO_ITM = CosmoSettings(discriminator=ITM, high=0.45, low=0.2, eps=0.3, smoothing_start_step=0)
SMOOTHING = SmoothingSettings(eps=0.2, start_step=0)


def _chain(*regulators):
    """The chain of (Regulator class, settings) pairs, in order."""
    return RegulatorChain([cls(settings, CONTEXT) for cls, settings in regulators])


# The six combinations asked for, in both forms and on 1 and 8 devices ...
CASES = {
    'infonce': dict(),
    'srcl': dict(chain=_chain((Srcl, SRCL))),
    'cosmo': dict(chain=_chain((Cosmo, COSMO))),
    'srcl_cosmo': dict(chain=_chain((Srcl, SRCL), (Cosmo, COSMO))),
    'smoothing': dict(chain=_chain((Smoothing, SMOOTHING))),
    'grit': dict(stop_grad_keys=True, consistency_weight=0.2),
}
# ... and the remaining branches once (softmax, 1 device): SRCL without a reference, smoothing over
# w_min's kept candidates, the consistency term with gradients into the keys, the ITM-style discriminator.
EXTRA_CASES = {
    'srcl_no_reference': dict(chain=_chain((Srcl, SRCL_NO_REFERENCE))),
    'srcl_smoothing_consistency': dict(chain=_chain((Srcl, SRCL), (Smoothing, SMOOTHING)), consistency_weight=0.2),
    'grit_srcl_cosmo_itm': dict(
        chain=_chain((Srcl, SRCL), (Cosmo, COSMO_ITM)), stop_grad_keys=True, consistency_weight=0.2
    ),
}
ALL_CASES = {**CASES, **EXTRA_CASES}
# Columns per tile on 1 device (32 rows): 8 = four chunks; 1 and 32 (one chunk) for two cases.
BLOCKS = {('srcl_cosmo', 'softmax'): 1, ('infonce', 'softmax'): 32}
# The test compiles ~60 small programs: XLA's cheapest settings keep that within the CI budget.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
FORMS = ('softmax', 'sigmoid')


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(BATCH, EMBED))
    text = image + 0.7 * rng.normal(size=(BATCH, EMBED))  # matching pairs are the most similar
    ref_image = rng.normal(size=(BATCH, EMBED))
    ref_text = ref_image + 0.7 * rng.normal(size=(BATCH, EMBED))
    f32 = lambda x: jnp.asarray(_unit(x), jnp.float32)
    return dict(
        image=f32(image),
        text=f32(text),
        scale=jnp.float32(7.0),
        bias=jnp.float32(-2.0),
        ref=(f32(ref_image), f32(ref_text)),
        disc=(f32(image + 0.5 * ref_image), f32(text + 0.5 * ref_text)),
    )


def _itm_like(disc):
    """An ITM-style discriminator (scores only the pairs it is asked about) that equals the cosine one."""
    image, text = disc
    return lambda j_i2t, j_t2i: (jnp.sum(image * text[j_i2t], -1), jnp.sum(image[j_t2i] * text, -1))


def _answers(case, data):
    """What the chain's frozen roles answer, as objectives.frozen.ask gives it: a 'cosine' role its (image, text)
    embeddings, the 'itm' role a scoring function."""
    chain = case.get('chain', RegulatorChain())
    data_key = {REFERENCE: 'ref', DISCRIMINATOR: 'disc'}
    return {
        role.role: _itm_like(data[data_key[role.role]]) if role.answer == ITM else data[data_key[role.role]]
        for role in chain.frozen_roles()
    }


def _options(case, form, data):
    return dict(
        form=form,
        sigmoid_bias=data['bias'] if form == 'sigmoid' else None,
        stop_grad_keys=case.get('stop_grad_keys', False),
        consistency_weight=case.get('consistency_weight', 0.0),
    )


def dense_loss(case, form, data, image, text, scale, bias):
    """What dual_encoder.contrastive computes today: the chain on [B, B] cosines, then the dense loss."""
    chain = case.get('chain', RegulatorChain())
    sims = image_text_cosines(image, text)
    (i2t, t2i), aux = (Regulation(), Regulation()), {}
    if chain.active:
        (i2t, t2i), aux = chain.dense(sims, _answers(case, data), jnp.int32(STEP))
    options = _options(case, form, data)
    options['sigmoid_bias'] = bias if form == 'sigmoid' else None
    loss, metrics = contrastive_loss(image, text, scale, i2t=i2t, t2i=t2i, **options)
    off = jnp.where(jnp.eye(BATCH, dtype=bool), -jnp.inf, sims)
    metrics['hardest_negative_similarity'] = jnp.mean(jnp.max(off, axis=1))
    return loss, (metrics, aux)


def chunked_loss(case, form, data, image, text, scale, bias, **kwargs):
    options = _options(case, form, data)
    options['sigmoid_bias'] = bias if form == 'sigmoid' else None
    loss, metrics, aux = chunked_contrastive_loss(
        image,
        text,
        scale,
        regulators=case.get('chain', RegulatorChain()),
        step=jnp.int32(STEP),
        answers=_answers(case, data),
        dense_diagnostics=True,
        **options,
        **kwargs,
    )
    return loss, (metrics, aux)


def _value_and_grads(fn, data):
    grad = jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)
    args = (data['image'], data['text'], data['scale'], data['bias'])
    return jax.jit(grad).lower(*args).compile(FAST_COMPILE)(*args)


def compare(name, form, data, **kwargs):
    """Asserts chunked == dense for one case; returns the dense loss."""
    case = ALL_CASES[name]
    (dense, (dense_metrics, dense_aux)), dense_grads = _value_and_grads(
        lambda *args: dense_loss(case, form, data, *args), data
    )
    (chunked, (metrics, aux)), grads = _value_and_grads(
        lambda *args: chunked_loss(case, form, data, *args, **kwargs), data
    )
    where = f'{name}/{form}/{kwargs}'
    np.testing.assert_allclose(chunked, dense, rtol=TOLERANCE, atol=TOLERANCE, err_msg=where)
    for what, got, want in zip(('image', 'text', 'scale', 'bias'), grads, dense_grads):
        np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f'{where} d/d{what}')
    for key, want in dense_metrics.items():
        np.testing.assert_allclose(metrics[key], want, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f'{where} {key}')
    if 'srcl' in dense_aux:
        np.testing.assert_allclose(aux['srcl']['alpha'], dense_aux['srcl']['alpha'], err_msg=where)
        for got, want in zip(aux['srcl']['log_w'], dense_aux['srcl']['log_w']):
            np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f'{where} log_w')
    if 'cosmo' in dense_aux:
        for direction in ('i2t', 't2i'):
            for key, want in dense_aux['cosmo'][direction].items():
                got = aux['cosmo'][direction][key]
                np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f'{where} {key}')
    return float(dense)


def _exercised(data):
    """The data must make every COSMO state and SRCL's w_min occur, or the cases prove little."""
    case = CASES['srcl_cosmo']
    _, (_, aux) = jax.jit(lambda: dense_loss(case, 'softmax', data, data['image'], data['text'], data['scale'], 0.0))()
    states = np.concatenate([np.asarray(aux['cosmo'][d]['state']) for d in ('i2t', 't2i')])
    masked = sum(int(np.sum(np.asarray(w) < -1e3)) for w in aux['srcl']['log_w'])
    return set(states.tolist()), masked


def test_inputs_exercise_every_regulator_branch():
    states, masked = _exercised(_inputs())
    assert states == {0, 1, 2}, states  # kept, dropped and converted hardest negatives
    assert masked > 0  # some negatives below w_min


@pytest.mark.parametrize(
    'name, form', [(name, form) for name in CASES for form in FORMS] + [(name, 'softmax') for name in EXTRA_CASES]
)
def test_chunked_equals_dense_on_one_device(name, form):
    compare(name, form, _inputs(), block_size=BLOCKS.get((name, form), 8))


def test_srcl_row_statistics_rebuild_the_dense_weights_only_when_asked():
    """Without dense_diagnostics nothing [B, B] is returned; `compare` checks the rebuilt log_w."""
    data = _inputs()
    chain = _chain((Srcl, SRCL))
    aux = jax.eval_shape(
        lambda: chunked_contrastive_loss(
            data['image'], data['text'], data['scale'], regulators=chain, answers={REFERENCE: data['ref']}
        )[2]
    )
    assert set(aux['srcl']) == {'alpha', 'log_mean'}
    assert [m.shape for m in aux['srcl']['log_mean']] == [(BATCH,), (BATCH,)]


def test_momentum_candidates_are_refused_with_a_clear_message():
    data = _inputs()
    with pytest.raises(AssertionError, match="loss.impl='dense'"):
        chunked_contrastive_loss(
            data['image'], data['text'], data['scale'], image_candidates=data['image'], text_candidates=data['text']
        )


def _eight_devices():
    """Run in a subprocess with 8 fake CPU devices: every case, ring and all-gather."""
    from jax.sharding import NamedSharding, PartitionSpec

    from vlp_jax.parallel import BATCH_AXES, make_mesh

    assert jax.device_count() == 8, jax.devices()

    def sharded(mesh):
        rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
        data = _inputs()
        for key in ('image', 'text'):
            data[key] = jax.device_put(data[key], rows)
        for key in ('ref', 'disc'):
            data[key] = tuple(jax.device_put(x, rows) for x in data[key])
        return data

    start = time.perf_counter()
    mesh = make_mesh({'data': 4, 'fsdp': 2, 'model': 1})
    data = sharded(mesh)
    with jax.set_mesh(mesh):
        for name in CASES:
            for form in FORMS:
                compare(name, form, data, block_size=2)  # 4 rows per device: 2 chunks per block
        compare('grit_srcl_cosmo_itm', 'softmax', data, comm='all_gather')
        compare('srcl_cosmo', 'sigmoid', data, comm='all_gather')
    mesh = make_mesh({'data': 2, 'fsdp': 2, 'model': 2})  # rows over 4 devices, replicated over 'model'
    with jax.set_mesh(mesh):
        compare('grit_srcl_cosmo_itm', 'softmax', sharded(mesh), block_size=4)
    print(f'EIGHT DEVICES OK {time.perf_counter() - start:.1f}s')


def test_chunked_equals_dense_on_eight_devices():
    from conftest import run_on_devices

    result = run_on_devices('import test_chunked_loss as t; t._eight_devices()', timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert 'EIGHT DEVICES OK' in result.stdout


@pytest.mark.slow  # budget: make test stays under 20 min on 2 cores
def test_the_objective_with_loss_impl_chunked_equals_dense_end_to_end():
    """loss.impl switches the dual encoder's objective; the same batch, regulators and frozen models give
    the same loss, metrics and gradients."""
    from conftest import FAST_OVERRIDES, REGULATED_IN_PROCESS, TINY_CONFIG, train_batches

    from vlp_jax import setup as setup_lib
    from vlp_jax.checks import validate
    from vlp_jax.config import apply_overrides, split_overrides
    from vlp_jax.config_files import load_config_file

    def build(impl):
        config = load_config_file(TINY_CONFIG)
        overrides = [
            *FAST_OVERRIDES,
            f'--config.loss.impl={impl}',
            *REGULATED_IN_PROCESS,
        ]
        apply_overrides(config, split_overrides(overrides)[1])
        validate(config, 1)
        return config, setup_lib.build(config, jax.devices()[:1])

    config, dense = build('dense')
    _, chunked = build('chunked')
    batch = train_batches(config, as_jax=True)[0]
    params = dense.init_state()['params']
    reference = jax.tree.map(lambda x: x * 1.5, params)  # another model: its cosines differ from the trained one's
    frozen = {'reference': reference, 'discriminator': reference}

    def run(run_setup):
        def loss_fn(p):
            loss, metrics, _ = run_setup.objective.loss(p, {}, frozen, batch, jax.random.key(0), jnp.int32(3))
            return loss, metrics

        with jax.set_mesh(run_setup.mesh):  # the chunked loss reads the context mesh, as in the train step
            return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss_d, metrics_d), grads_d = run(dense)
    (loss_c, metrics_c), grads_c = run(chunked)
    np.testing.assert_allclose(float(loss_c), float(loss_d), rtol=1e-5)
    for key in ('train/loss_i2t', 'train/loss_t2i', 'train/i2t_accuracy', 'train/hardest_negative_similarity'):
        np.testing.assert_allclose(float(metrics_c[key]), float(metrics_d[key]), rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_d)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
