"""Real photos end to end: prepare -> train -> evaluate (with --config or the workdir alone), and a SIGKILLed run
resumes bit-exactly.

The prepared photos get one more record whose image does not decode, so the runs also
cover a stand-in record and its count (train/bad_records) across the kill. The run is the small run a
new user makes (20 steps, the default warmup of 100 steps, the default eval batch): its start must say so.
"""

import json

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, TINY_CONFIG, kill_after_checkpoint, read_metrics, run_cli

from vlp_jax.data import records as records_lib
from vlp_jax.data.example_photos import photo_captions, write_csv
from vlp_jax.data.prepare import prepare
from vlp_jax.metrics import SPEED_KEYS as TIMING_KEYS

STEPS, BATCH = 20, 4  # 16 records: 4 steps an epoch, so each record (the bad one too) once per epoch


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    write_csv(str(folder / 'photos.csv'))
    report = prepare(str(folder / 'photos.csv'), str(folder / 'prepared'), shard_size=8, progress=False)
    assert report['written'] == len(photo_captions()) == 15 and report['skipped'] == {}
    _append_bad_record(folder / 'prepared')
    return folder / 'prepared'


def _append_bad_record(directory):
    """A shard holding one record whose image bytes TF cannot decode, added to the index."""
    from array_record.python import array_record_module

    writer = array_record_module.ArrayRecordWriter(str(directory / 'shard-bad.array_record'), 'group_size:1')
    record = records_lib.Record(
        id='bad', captions=['a picture that is not there'], image=b'\x89PNG broken', format='png'
    )
    writer.write(records_lib.encode_record(record))
    writer.close()
    index = records_lib.read_index(str(directory))
    shards = [*index['shards'], {'file': 'shard-bad.array_record', 'records': 1}]
    records_lib.write_index(str(directory), shards, None)


def _args(workdir, photos):
    return [
        '--config',
        f'{TINY_CONFIG}:steps={STEPS}',
        '--workdir',
        str(workdir),
        *FAST_OVERRIDES,
        f'--config.batch_size={BATCH}',
        '--config.log_every=2',
        '--config.checkpoint_every=4',
        '--config.optim.warmup_steps=100',  # the default, longer than the run
        '--config.eval.batch_size=256',  # the default, far more than the 15 photos that decode
        '--config.data.name=records',
        f'--config.data.records.path={photos}',
        f'--config.data.records.eval_path={photos}',
    ]


@pytest.fixture(scope='module')
def straight(photos, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('straight')
    result = run_cli('vlp_jax.train', _args(workdir, photos))
    return workdir, result


def test_a_small_run_says_so_once_at_its_start(straight):
    """The eval set's size, and a warning for it, for the warmup and for the eval batch: once each, before
    the first step; the first ETA comes after the compiled steps."""
    lines = straight[1].stdout.splitlines()
    first_step = next(i for i, line in enumerate(lines) if line.startswith('step '))
    expected = [
        "eval set retrieval:records (the run's own split): 15 images, 60 captions",
        "WARNING: eval set retrieval:records (the run's own split) holds only 15 images",
        'WARNING: optim.warmup_steps=100 >= total_steps=20',
        'WARNING: eval.batch_size=256 does not divide the 15 images',
    ]
    for text in expected:
        where = [i for i, line in enumerate(lines) if line.startswith(text)]
        assert len(where) == 1 and where[0] < first_step, (text, lines)
    steps = [line for line in lines if line.startswith('step ')]
    assert steps[0].endswith('ETA -') and all('ETA -' not in line for line in steps[1:]), steps


def test_train_on_real_photos_evaluates_them(straight, photos):
    workdir, result = straight
    records = read_metrics(workdir)
    assert [r['step'] for r in records] == list(range(2, STEPS + 1, 2))
    counts = [r['train/bad_records'] for r in records]
    assert counts == sorted(counts) and counts[1] == 1 and counts[-1] == 5  # the bad record, once an epoch
    final = records[-1]
    assert 'eval/retrieval/t2i_r1' in final and 'eval/retrieval/t2i_semantic_r1' not in final


@pytest.mark.parametrize('with_config', [True, False], ids=['with-config', 'workdir-only'])
def test_evaluate_reproduces_the_final_eval_and_writes_a_table(straight, photos, with_config):
    """Also with no --config: the run's config.json names the records, the model and the eval sets."""
    workdir, _ = straight
    final = read_metrics(workdir)[-1]
    evaluated = run_cli('vlp_jax.evaluate', _args(workdir, photos) if with_config else ['--workdir', str(workdir)])
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert metrics['step'] == STEPS
    for key, value in final.items():
        if key.startswith('eval/'):
            assert metrics[key] == value, key
    table = (workdir / f'eval_step{STEPS}.md').read_text()
    assert f'| retrieval | t2i_r1 | {final["eval/retrieval/t2i_r1"]:.4f} |' in table


def test_sigkill_then_resume_is_bit_exact(straight, photos, tmp_path):
    workdir = tmp_path / 'killed'
    kill_after_checkpoint(_args(workdir, photos), workdir, 4)
    resumed = run_cli('vlp_jax.train', _args(workdir, photos))
    assert 'resumed from checkpoint at step' in resumed.stdout
    expected, actual = read_metrics(straight[0]), read_metrics(workdir)
    assert [r['step'] for r in actual] == [r['step'] for r in expected]
    for a, e in zip(actual, expected):
        a = {k: v for k, v in a.items() if k not in TIMING_KEYS}
        e = {k: v for k, v in e.items() if k not in TIMING_KEYS}
        assert a.keys() == e.keys()
        for key in e:
            np.testing.assert_array_equal(a[key], e[key], err_msg=f'step {e["step"]} {key}')
