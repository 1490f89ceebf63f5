"""prepare --format TASK on small JSON files over the shipped photos: good rows are written with what the task needs
(captions, image ids, labels, both NLVR2 images, boxes, answers), bad rows are counted and named; the records
sources serve the fields the synthetic task sources serve; a prepared NLVR2 set trains (slow)."""

import json
import os

import numpy as np
import pytest
from conftest import FAST_OVERRIDES, REPO, read_metrics, run_cli
from PIL import Image

from vlp_jax.data.errors import DataError
from vlp_jax.data.example_photos import skimage_data_dir
from vlp_jax.data.prepare import main, prepare
from vlp_jax.data.prepare_tasks import stable_id
from vlp_jax.data.record_source import RecordSource
from vlp_jax.data.records import RecordSet
from vlp_jax.data.sources import SourceContext
from vlp_jax.data.tasks import record_tasks

PHOTOS = skimage_data_dir()
SIZE = 32  # the model's input side in these tests
# Small photos of distinct sizes, formats and modes (rocket.jpg: a JPEG, decoded in draft mode).
A, B, C, D = 'microaneurysms.png', 'coins.png', 'chelsea.png', 'rocket.jpg'


def _prepare(tmp_path, fmt, rows, out='out', **options):
    path = tmp_path / f'{fmt}.json'
    path.write_text(json.dumps(rows))
    report = prepare(
        str(path), str(tmp_path / out), task_format=fmt, image_root=PHOTOS, progress=False, workers=1, **options
    )
    return report, tmp_path / out


def _records(directory):
    records = RecordSet(str(directory))
    return {record.id: record for record in records.records(range(len(records)))}


def _named(report):
    return [(row['row'], row['key'], row['reason']) for row in report['skipped_rows']]


def _file(name):
    with open(os.path.join(PHOTOS, name), 'rb') as handle:
        return handle.read()


def _plugin(cls, settings_cls, directory, **settings):
    return cls(settings_cls(path=str(directory), **settings), SourceContext(seed=0, image_size=SIZE))


def test_retrieval_rows_become_images_with_all_captions_and_shared_image_ids(tmp_path):
    rows = [
        {'image': A, 'caption': 'a dark round eye', 'image_id': 'a'},
        {'image': B, 'caption': 'coins on a table', 'image_id': 'b'},
        {'image': A, 'caption': 'a fundus photo', 'image_id': 'a'},
        {'image': C, 'caption': ['a cat', 'a tabby cat'], 'image_id': 'a'},  # ALBEF's test layout; shares id 'a'
        {'image': 'nope.png', 'caption': 'a file that is not there', 'image_id': 'x'},
        {'image': A, 'caption': 7, 'image_id': 'a'},
        {'image': B, 'caption': 'coins again', 'image_id': 'z'},  # B's earlier row said 'b'
        {'caption': 'no image at all'},
    ]
    report, out = _prepare(tmp_path, 'retrieval', rows, shard_size=3)
    assert report['written'] == 3 and report['captions'] == 5
    assert report['skipped'] == {'missing_image': 1, 'missing_field': 1, 'wrong_type': 1, 'conflicting_image_id': 1}
    assert _named(report) == [
        (5, 'nope.png', 'missing_image'),
        (6, A, 'wrong_type'),
        (7, B, 'conflicting_image_id'),
        (8, '', 'missing_field'),
    ]
    records = _records(out)
    assert {key: r.captions for key, r in records.items()} == {
        A: ['a dark round eye', 'a fundus photo'],
        B: ['coins on a table'],
        C: ['a cat', 'a tabby cat'],
    }
    assert {key: r.fields['image_id'] for key, r in records.items()} == {
        A: stable_id('a'),
        B: stable_id('b'),
        C: stable_id('a'),
    }
    assert all(r.image == _file(key) for key, r in records.items())  # each with its own image, stored as given
    plugin = _plugin(record_tasks.RetrievalRecordsPlugin, record_tasks.RetrievalRecordsSettings, out, eval_path=out)
    train, test = plugin.open('train'), plugin.open('test')
    batch = train.batch(np.arange(len(train)))
    assert batch['captions'] == [
        ['a dark round eye'],
        ['a fundus photo'],
        ['coins on a table'],
        ['a cat'],
        ['a tabby cat'],
    ]
    np.testing.assert_array_equal(batch['fields']['image_id'], [stable_id(v) for v in 'aabaa'])
    assert batch['image'].shape == (5, SIZE, SIZE, 3) and train.field_keys == ('image_id',)
    assert len(test) == 3 and test.batch(np.arange(3))['captions'][2] == ['a cat', 'a tabby cat']
    assert RecordSource(str(out)).batch(np.arange(1))['captions'] == [['a dark round eye', 'a fundus photo']]


def test_snli_ve_labels_in_the_task_order_and_bad_labels_named(tmp_path):
    rows = [
        {'image': A, 'sentence': 'an eye', 'label': 'entailment'},
        {'image': B, 'sentence': 'coins made of gold', 'label': 'Neutral'},
        {'image': A, 'sentence': 'a dog', 'label': 'contradiction'},
        {'image': B, 'sentence': 'coins', 'label': 'maybe'},
        {'image': B, 'sentence': 'coins', 'label': 2},
        {'image': C, 'label': 'entailment'},
        'not an object',
    ]
    report, out = _prepare(tmp_path, 'snli_ve', rows)
    assert report['skipped'] == {'bad_label': 1, 'missing_field': 1, 'wrong_type': 2}
    assert _named(report) == [(4, B, 'bad_label'), (5, B, 'wrong_type'), (6, C, 'missing_field'), (7, '', 'wrong_type')]
    records = _records(out)
    assert records[A].captions == ['an eye', 'a dog'] and records[B].captions == ['coins made of gold']
    assert [f['label'] for f in records[A].caption_fields] == [0, 2] and records[B].caption_fields == [{'label': 1}]
    plugin = _plugin(record_tasks.SnliVeRecordsPlugin, record_tasks.SnliVeRecordsSettings, out, test_size=1)
    train = plugin.open('train')  # record A's two hypotheses; record B is held out for evaluation
    batch = train.batch(np.arange(len(train)))
    assert batch['captions'] == [['an eye'], ['a dog']] and train.class_names == (
        'entailment',
        'neutral',
        'contradiction',
    )
    np.testing.assert_array_equal(batch['fields']['label'], [[0], [2]])
    assert plugin.open('test').batch(np.arange(1))['fields']['label'].tolist() == [[1]]
    with pytest.raises(DataError, match=r'data\.records_snli_ve\.test_size=2 of the 2 records'):
        _plugin(record_tasks.SnliVeRecordsPlugin, record_tasks.SnliVeRecordsSettings, out, test_size=2).open('train')


def test_nlvr2_records_hold_both_images_and_the_statements_truth(tmp_path):
    rows = [
        {'images': [A, B], 'sentence': 'the left image shows an eye', 'label': 'True'},
        {'images': [C, D], 'sentence': 'both images show a rocket', 'label': False},
        {'images': [C, D], 'sentence': 'the right image shows a rocket', 'label': 'true'},
        {'images': [A, 'nope.png'], 'sentence': 'a missing right image', 'label': 'True'},
        {'images': [A, B], 'sentence': 'hm', 'label': 'yes'},
        {'images': [A, B, C], 'sentence': 'three images', 'label': 'True'},
    ]
    report, out = _prepare(tmp_path, 'nlvr2', rows)
    assert report['written'] == 2 and report['captions'] == 3
    assert report['skipped'] == {'missing_image': 1, 'bad_label': 1, 'wrong_type': 1}
    assert _named(report) == [
        (4, f'{A} + nope.png', 'missing_image'),
        (5, f'{A} + {B}', 'bad_label'),
        (6, f'{A} + {B} + {C}', 'wrong_type'),
    ]
    records = _records(out)
    pair = records[f'{C} + {D}']
    assert pair.image == _file(C) and pair.image1 == _file(D) and pair.image1_format == 'jpeg'
    assert records[f'{A} + {B}'].image == _file(A) and records[f'{A} + {B}'].image1 == _file(B)
    assert [f['label'] for f in pair.caption_fields] == [0, 1]
    source = _plugin(record_tasks.Nlvr2RecordsPlugin, record_tasks.Nlvr2RecordsSettings, out, eval_path=out).open(
        'train'
    )
    batch = source.batch(np.arange(3))
    np.testing.assert_array_equal(batch['fields']['label'], [[1], [0], [1]])
    # the right image is the right file's: closer to it than to the left one, squashed to SIZE
    photo = lambda name: np.asarray(Image.open(os.path.join(PHOTOS, name)).convert('RGB').resize((SIZE, SIZE)), float)
    for row, (left, right) in enumerate([(A, B), (C, D), (C, D)]):
        distance = lambda image, name: np.abs(image.astype(float) - photo(name)).mean()
        assert distance(batch['fields']['image1'][row], right) < 8 < distance(batch['fields']['image1'][row], left)
        assert distance(batch['image'][row], left) < 8
    assert batch['flip_sensitive'][0].tolist() == [True] and batch['flip_sensitive'][1].tolist() == [False]


def test_grounding_boxes_are_kept_and_scaled_with_the_image(tmp_path):
    boxes = {
        '1': {'box': [60, 40, 120, 80], 'proposals': [[60, 40, 120, 80], [0, 0, 300, 200]]},
        '2': {'box': [0, 0, 0, 5], 'proposals': [[0, 0, 1, 1]]},
        '4': {'box': [10, 10, 10, 10], 'proposals': [[10, 10, 10, 10]]},
    }
    (tmp_path / 'boxes.json').write_text(json.dumps(boxes))
    rows = [
        {'image': 'coffee.png', 'text': 'the cup', 'ref_id': 1},
        {'image': 'coffee.png', 'text': 'the saucer', 'ref_id': 2},
        {'image': 'coffee.png', 'text': 'the spoon', 'ref_id': 3},
        {'image': 'coffee.png', 'ref_id': 4},
    ]
    report, out = _prepare(tmp_path, 'grounding', rows, boxes=str(tmp_path / 'boxes.json'))
    assert report['written'] == 1 and report['skipped'] == {'missing_field': 1, 'no_box': 1, 'bad_box': 1}
    assert [reason for _, _, reason in _named(report)] == ['bad_box', 'no_box', 'missing_field']
    (record,) = _records(out).values()
    assert record.caption_fields == [{'ref_id': 1, 'box': [60, 40, 120, 80], 'proposals': boxes['1']['proposals']}]
    plugin = _plugin(record_tasks.GroundingRecordsPlugin, record_tasks.GroundingRecordsSettings, out, eval_path=out)
    fields = plugin.open('test').batch(np.arange(1))['fields']
    # coffee.png is 600 x 400: x and w times 32/600, y and h times 32/400
    np.testing.assert_allclose(fields['box'], [[3.2, 3.2, 6.4, 6.4]], rtol=1e-6)
    np.testing.assert_allclose(fields['proposals'], [[[3.2, 3.2, 6.4, 6.4], [0, 0, 16, 16]]], rtol=1e-6)
    assert plugin.open('train').batch(np.arange(1))['fields']['image_id'].tolist() == [stable_id('coffee.png')]
    # the same rows without --boxes are training pairs, which cannot evaluate grounding
    _, box_free = _prepare(tmp_path, 'grounding', rows[:1], out='box_free')
    with pytest.raises(DataError, match='--boxes'):
        _plugin(
            record_tasks.GroundingRecordsPlugin, record_tasks.GroundingRecordsSettings, box_free, eval_path=box_free
        ).open('test')


def test_vqa_questions_keep_every_human_answer_and_the_answer_list(tmp_path):
    (tmp_path / 'answer_list.json').write_text(json.dumps(['yes', 'no', 'two']))
    rows = [
        {'question_id': 11, 'image': B, 'question': 'how many coins?', 'answer': ['two', 'two', 'three']},
        {'question_id': 12, 'image': B, 'question': 'are they round?', 'answer': 'yes'},
        {'question_id': 13, 'image': A, 'question': 'is it an eye?'},  # a test question: no answers
        {'question_id': '14', 'image': A, 'question': 'a string id'},
        {'question_id': 15, 'image': A, 'question': 'bad answers', 'answer': [1, 2]},
    ]
    answer_list = str(tmp_path / 'answer_list.json')
    report, out = _prepare(tmp_path, 'vqa', rows, answer_list=answer_list)
    assert report['written'] == 2 and report['captions'] == 3 and report['skipped'] == {'wrong_type': 2}
    records = _records(out)
    assert records[B].captions == ['how many coins?', 'are they round?']
    assert records[B].caption_fields == [
        {'question_id': 11, 'answers': ['two', 'two', 'three']},
        {'question_id': 12, 'answers': ['yes']},
    ]
    assert records[A].caption_fields == [{'question_id': 13, 'answers': []}]
    assert RecordSet(str(out)).index['answer_list'] == ['yes', 'no', 'two']
    plugin = _plugin(record_tasks.VqaRecordsPlugin, record_tasks.VqaRecordsSettings, out, eval_path=out, answer_slots=3)
    test = plugin.open('test')
    assert len(test) == 3 and test.answer_list == ('yes', 'no', 'two')
    batch = test.batch(np.arange(3))
    by_question = {int(q): row for row, q in enumerate(batch['fields']['question_id'])}
    assert sorted(by_question) == [11, 12, 13]
    coins, round_, eye = (by_question[q] for q in (11, 12, 13))
    assert batch['captions'][coins] == ['how many coins?'] and batch['captions'][eye] == ['is it an eye?']
    # ALBEF's weights by hand: 'two' given by 2 of 3 humans, 'three' by 1; a pad slot weighs 0
    assert batch['fields']['answers'][coins] == ['two', 'three', '']
    np.testing.assert_allclose(batch['fields']['answer_weight'][coins], [2 / 3, 1 / 3, 0.0], rtol=1e-6)
    assert batch['fields']['answers'][round_] == ['yes', '', ''] and batch['fields']['answer_weight'][round_][0] == 1
    assert batch['fields']['human_answers'][coins] == ['two', 'two', 'three']
    assert batch['fields']['human_answers'][eye] == [] and not batch['fields']['answer_weight'][eye].any()
    assert batch['image'].shape == (3, SIZE, SIZE, 3) and test.field_keys == ('answers', 'answer_weight', 'question_id')


def test_cli_prints_the_counts_and_names_the_bad_rows_and_refuses_another_format(tmp_path, capsys):
    rows = [{'images': [A, B], 'sentence': 'an eye on the left', 'label': 'True'}, {'images': [A, B], 'label': 'True'}]
    (tmp_path / 'nlvr2.json').write_text(json.dumps(rows))
    args = [str(tmp_path / 'nlvr2.json'), str(tmp_path / 'out'), '--image_root', PHOTOS, '--no_progress']
    assert main([*args, '--format', 'nlvr2', '--workers', '1']) == 0
    printed = capsys.readouterr().out.splitlines()
    out = tmp_path / 'out'
    assert printed[0] == (
        f'wrote 1 records with 1 statements to {out} (1 shards); skipped: missing_field 1; truncated captions: 0'
    )
    assert printed[2] == f"  nlvr2.json row 2 ({A} + {B}): missing_field (no 'sentence')"
    assert main([*args[:1], str(tmp_path / 'other'), '--format', 'snli_ve']) == 2
    assert 'has the keys of --format snli_ve' in capsys.readouterr().err
    with pytest.raises(DataError, match='records_nlvr2'):
        RecordSource(str(out))  # the caption source does not read statements as captions


def test_a_changed_label_rebuilds_only_its_shard(tmp_path):
    rows = [{'image': name, 'sentence': f'about {name}', 'label': 'neutral'} for name in (A, B, C, D)]
    first, out = _prepare(tmp_path, 'snli_ve', rows, shard_size=2)
    again, _ = _prepare(tmp_path, 'snli_ve', rows, shard_size=2)
    assert again['last_run'] == {'kept_shards': 2, 'new_shards': 0, 'rebuilt_shards': 0, 'removed_shards': 0}
    rows[3]['label'] = 'contradiction'
    changed, _ = _prepare(tmp_path, 'snli_ve', rows, shard_size=2)
    assert changed['last_run'] == {'kept_shards': 1, 'new_shards': 0, 'rebuilt_shards': 1, 'removed_shards': 0}
    assert _records(out)[D].caption_fields == [{'label': 2}]


@pytest.mark.slow
def test_two_steps_of_nlvr2_on_prepared_records(tmp_path):
    """configs/finetune/nlvr2.py:tiny with data.name=records_nlvr2 trains and evaluates (eval/nlvr2/accuracy)."""
    names = [A, B, C, D, 'clock_motion.png', 'coffee.png']
    rows = [
        {'images': [names[i % 6], names[(i + 1) % 6]], 'sentence': f'statement {i}', 'label': bool(i % 2)}
        for i in range(8)
    ]
    _, out = _prepare(tmp_path, 'nlvr2', rows)
    size_flags = [flag for flag in FAST_OVERRIDES if '.model.' in flag]
    args = [
        '--config',
        os.path.join(REPO, 'configs', 'finetune', 'nlvr2.py') + ':tiny,steps=2',
        '--workdir',
        str(tmp_path / 'run'),
        *size_flags,
        '--config.batch_size=4',
        '--config.eval.batch_size=4',
        '--config.optim.warmup_steps=1',
        '--config.data.name=records_nlvr2',
        f'--config.data.records_nlvr2.path={out}',
        '--config.data.records_nlvr2.test_size=4',
    ]
    run_cli('vlp_jax.train', args)
    metrics = read_metrics(tmp_path / 'run')
    assert [r['step'] for r in metrics if 'train/loss' in r] and 0 <= metrics[-1]['eval/nlvr2/accuracy'] <= 1
