"""Prepared records through the pipeline: each caption with its own image, bad records replaced deterministically."""

import io

import numpy as np
import pytest
from conftest import train_pipeline
from PIL import Image

from vlp_jax.data import records as records_lib
from vlp_jax.data.errors import DataError
from vlp_jax.data.eval_sets import source_retrieval_set
from vlp_jax.data.record_source import RecordSource, split_positions
from vlp_jax.derived import source_plugin

COUNT, BATCH, SIZE = 24, 8, 16
GARBAGE, NO_CAPTION, TRUNCATED = 5, 11, 17  # records that fail to load, three ways
BAD = {GARBAGE, NO_CAPTION, TRUNCATED}


def colour(i):
    return (i * 10, 200 - i * 5, 7 * i)


def caption(i):
    return f'a picture numbered {i} in colour'


def _png(i):
    buffer = io.BytesIO()
    Image.new('RGB', (20 + i, 12 + 2 * i), colour(i)).save(buffer, format='PNG')  # sizes differ per record
    return buffer.getvalue()


def write_records(directory, count=COUNT):
    from array_record.python import array_record_module

    writer = array_record_module.ArrayRecordWriter(str(directory / 'shard-00000.array_record'), 'group_size:1')
    for i in range(count):
        image, captions = _png(i), [caption(i), caption(i).replace('picture', 'photo')]
        if i == GARBAGE:
            image = b'these bytes are no image'
        if i == NO_CAPTION:
            captions = []
        if i == TRUNCATED:
            image = image[: len(image) // 2]
        record = records_lib.Record(id=f'r{i:02d}', captions=captions, image=image, format='png')
        writer.write(records_lib.encode_record(record))
    writer.close()
    records_lib.write_index(str(directory), [{'file': 'shard-00000.array_record', 'records': count}], None)
    return directory


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp('records'))


@pytest.fixture()
def config(tiny_config, folder):
    config = tiny_config.copy_and_resolve_references()
    config.batch_size = BATCH
    config.data.name, config.data.records.path, config.data.records.eval_path = 'records', str(folder), str(folder)
    config.model.image_size = SIZE
    return config


def _pipeline(config):
    return train_pipeline(config)


def _open(config, split):
    return source_plugin(config, 'records').open(split)


def _record_of(batch, row, tokenizer):
    """The record a batch row shows, read from its image's colour; and its caption's record."""
    pixels = (batch['image'][row] * 0.5 + 0.5) * 255.0
    mean = pixels.reshape(-1, 3).mean(axis=0)
    by_colour = int(np.argmin([np.abs(mean - colour(i)).max() for i in range(COUNT)]))
    assert np.abs(pixels - colour(by_colour)).max() < 1.0, 'a solid colour survives resizing'
    text = tokenizer.decode(batch['text_ids'][row].tolist())
    by_caption = [i for i in range(COUNT) if text in (caption(i), caption(i).replace('picture', 'photo'))]
    return by_colour, by_caption


def test_record_layout_round_trip_and_bad_magic():
    record = records_lib.Record(id='x/1', captions=['é', 'b'], image=b'\x00\xff', format='png', label=3)
    assert records_lib.decode_record(records_lib.encode_record(record)) == record
    with pytest.raises(DataError, match='magic'):
        records_lib.decode_record(b'PK\x03\x04' + b'\x00' * 10)


def test_each_caption_comes_with_its_own_image_and_bad_records_are_stood_in_for(config):
    pipeline = _pipeline(config)
    batches = list(pipeline.iterate(0, 3))  # one epoch: every index once
    replaced_indices = []
    for step, batch in enumerate(batches):
        for row, index in enumerate(batch['index']):
            shown, captioned = _record_of(batch, row, pipeline.tokenizer)
            assert captioned == [shown], (step, row, index)
            if batch['replaced'][row]:
                replaced_indices.append(int(index))
                assert shown not in BAD and shown != index
            else:
                assert shown == index
    assert sorted(replaced_indices) == sorted(BAD)
    assert pipeline.bad_records == BAD


def test_stand_ins_are_a_pure_function_of_seed_step_and_index(config):
    straight = list(_pipeline(config).iterate(0, 6))
    restarted = list(_pipeline(config).iterate(4, 6))  # a fresh process knows no bad record yet
    for a, b in zip(straight[4:], restarted):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert sum(int(batch['replaced'].sum()) for batch in straight) == 2 * len(BAD)


def test_eval_set_leaves_out_records_that_do_not_load(config, folder):
    data = source_retrieval_set(RecordSource(str(folder)), COUNT, SIZE, config.model.max_text_len)
    assert data.dropped == len(BAD) and data.images.shape == (COUNT - len(BAD), SIZE, SIZE, 3)
    good = [i for i in range(COUNT) if i not in BAD]
    for image, i in zip(data.images, good):  # images in order, centre-cropped
        assert np.abs((image * 0.5 + 0.5) * 255.0 - colour(i)).max() < 1.0
    assert data.text_image.tolist() == [n for n in range(len(good)) for _ in range(2)]
    assert data.truth is None  # real data: no ground truth, so no semantic metrics


def test_held_out_split_and_its_limits(config):
    assert split_positions(10, 3, 'train').tolist() == list(range(7))
    assert split_positions(10, 3, 'test').tolist() == [7, 8, 9]
    config.data.records.eval_path, config.data.records.test_size = '', 4
    assert len(_open(config, 'train')) == COUNT - 4 and len(_open(config, 'test')) == 4
    config.data.records.test_size = COUNT
    with pytest.raises(DataError, match='data.records.test_size'):
        _open(config, 'train')


def test_missing_folder_names_the_command(tmp_path):
    with pytest.raises(DataError, match='python -m vlp_jax.data.prepare'):
        RecordSource(str(tmp_path / 'nothing'))


def test_jpeg_crop_window_decode_matches_decoding_the_whole_image():
    import tensorflow as tf

    from vlp_jax.data.tf_augment import decode_crop

    y, x = np.mgrid[0:120, 0:200]
    pixels = np.stack([x, y * 2, (x + y) // 2], -1).astype(np.uint8)  # smooth: JPEG keeps it close
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format='JPEG', quality=95)
    decoded = io.BytesIO()
    Image.open(io.BytesIO(jpeg.getvalue())).save(decoded, format='PNG')  # the same pixels, whole-image path
    box = tf.constant([0.1, 0.2, 0.7, 0.9])
    window = decode_crop(tf.constant(jpeg.getvalue()), box, 32).numpy()
    whole = decode_crop(tf.constant(decoded.getvalue()), box, 32).numpy()
    assert np.abs(window - whole).max() < 0.03
    assert np.abs(window - np.roll(whole, 4, axis=1)).max() > 0.03  # a shifted window would be caught
