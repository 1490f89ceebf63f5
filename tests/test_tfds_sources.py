"""TFDS sets through tfds.data_source, offline with tfds.testing.mock_data: captions, labels, training, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import FAST_OVERRIDES, REPO, TINY_CONFIG, read_metrics

from vlp_jax.data.errors import DataError
from vlp_jax.data.tfds_source import TfdsSource

MOCK_EXAMPLES = 40


def test_coco_captions_gives_encoded_images_and_every_caption():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        source = TfdsSource('coco_captions', 'test', '', 'image', 'captions/text', None)
        # mock_data's random examples depend on the features read, so read the same ones directly
        decoders = tfds.decode.PartialDecoding(
            {'image': True, 'captions': {'text': True}}, decoders={'image': tfds.decode.SkipDecoding()}
        )
        direct = tfds.data_source('coco_captions', split='test', download=False, decoders=decoders)
        batch = source.batch(np.array([3, 7]))
        for row, index in enumerate((3, 7)):
            expected = [str(text) for text in direct[index]['captions']['text']]
            assert batch['captions'][row] == expected and len(expected) > 0
            assert batch['image_bytes'][row] == direct[index]['image'] and batch['image_bytes'][row][:2] == b'\xff\xd8'
        assert len(source) == MOCK_EXAMPLES and batch['label'].tolist() == [-1, -1]


def test_classification_set_names_its_classes():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        source = TfdsSource('cifar10', 'test', '', 'image', None, 'label')
        decoders = tfds.decode.PartialDecoding(
            {'image': True, 'label': True}, decoders={'image': tfds.decode.SkipDecoding()}
        )
        direct = tfds.data_source('cifar10', split='test', download=False, decoders=decoders)
        assert source.class_names == tuple(tfds.builder('cifar10').info.features['label'].names)
        assert source.batch(np.arange(5))['label'].tolist() == [int(direct[i]['label']) for i in range(5)]


def test_unprepared_set_names_set_directory_and_command(tmp_path):
    with pytest.raises(DataError) as error:
        TfdsSource('cifar10', 'test', str(tmp_path), 'image', None, 'label')
    message = str(error.value)
    assert "'cifar10' is not prepared in " + str(tmp_path) in message
    assert f'tfds build cifar10 --data_dir={tmp_path} --file_format=array_record' in message


def test_unknown_feature_is_one_sentence():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES), pytest.raises(DataError, match="no feature 'caption'"):
        TfdsSource('coco_captions', 'test', '', 'image', 'caption', None)


def _mock_cli(module, args):
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=1')
    command = [sys.executable, os.path.join(REPO, 'tests', 'tfds_mock_main.py'), str(MOCK_EXAMPLES), module, *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_on_mock_coco_and_evaluate_retrieval_and_classification(tmp_path):
    args = [
        '--config',
        f'{TINY_CONFIG}:steps=4',
        '--workdir',
        str(tmp_path),
        *FAST_OVERRIDES,
        '--config.batch_size=4',
        '--config.log_every=2',
        '--config.data.name=tfds',
        '--config.eval.retrieval_size=16',
        '--config.eval.classification_size=16',
        '--config.eval.batch_size=16',
        '--config.checkpoint_every=4',
        '--config.eval.sets=default,classification:tfds:cifar10:test',
    ]
    result = _mock_cli('vlp_jax.train', args)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(tmp_path)
    assert [r['step'] for r in records] == [2, 4] and records[-1]['train/bad_records'] == 0
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= final['eval/retrieval/t2i_r1'] <= 1.0 and 'eval/retrieval/t2i_semantic_r1' not in final
    assert 0.0 <= final['eval/zeroshot/cifar10_test/top1'] <= 1.0
    assert not any('probe' in key or 'false_negative' in key for key in records[-1])  # no ground truth here
