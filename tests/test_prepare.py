"""prepare: tables and webdataset shards -> records; broken entries are counted exactly, resuming rewrites nothing."""

import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from vlp_jax.data.prepare import prepare
from vlp_jax.data.records import RecordSet

LONG = 'x' * 10_000
INVALID_UTF8 = b'caf\xe9 \xff au lait'


def _image_bytes(colour, fmt, size=(12, 8)):
    buffer = io.BytesIO()
    Image.new('RGB', size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _truncated_jpeg():
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format='JPEG')
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


# (file, bytes or None (missing), [caption bytes]) -- one entry per image
BROKEN = [
    ('good1.png', _image_bytes('red', 'PNG'), [b'a red square', b'a red box']),
    ('good2.jpg', _image_bytes('blue', 'JPEG'), [b'a blue square']),
    ('good3.webp', _image_bytes('green', 'WEBP'), [b'a green square', b'   ']),
    ('truncated.jpg', _truncated_jpeg(), [b'noise, cut in half']),
    ('text.jpg', b'this is a text file, not an image\n', [b'not an image']),
    ('empty.png', _image_bytes('white', 'PNG'), [b'']),
    ('latin1.png', _image_bytes('black', 'PNG'), [INVALID_UTF8]),
    ('long.png', _image_bytes('grey', 'PNG'), [LONG.encode()]),
    ('missing.png', None, [b'a file that is not there']),
]
EXPECTED_SKIPPED = {
    'missing_image': 1,
    'not_an_image': 1,
    'corrupt_image': 1,
    'no_caption': 3,  # empty.png, latin1.png, long.png lost their only caption
    'empty_caption': 2,
    'invalid_utf8': 1,
    'caption_too_long': 1,
}
GOOD_CAPTIONS = {
    'good1.png': ['a red square', 'a red box'],
    'good2.jpg': ['a blue square'],
    'good3.webp': ['a green square'],
}


def _write_images(folder):
    for name, data, _ in BROKEN:
        if data is not None:
            (folder / name).write_bytes(data)


def _broken_csv(folder):
    _write_images(folder)
    lines = [b'image,caption']
    for name, _, captions in BROKEN:
        lines += [name.encode() + b',"' + caption + b'"' for caption in captions]
    path = folder / 'pairs.csv'
    path.write_bytes(b'\n'.join(lines) + b'\n')
    return path


def _broken_webdataset(folder):
    shards = folder / 'shards'
    shards.mkdir()
    for number, half in enumerate((BROKEN[:5], BROKEN[5:])):
        with tarfile.open(shards / f'{number:05d}.tar', 'w') as archive:
            for position, (name, data, captions) in enumerate(half):
                key = f'{number:05d}{position:04d}'
                members = [(f'{key}.txt', b'\n'.join(captions) if len(captions) == 1 else captions[0])]
                if data is not None:
                    members.append((f'{key}.{name.rsplit(".", 1)[1]}', data))
                for member, payload in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
    return shards


def _by_id(directory):
    records = RecordSet(directory)
    return {record.id: record for record in records.records(range(len(records)))}


def test_csv_with_broken_entries_keeps_the_good_and_counts_the_rest(tmp_path):
    report = prepare(str(_broken_csv(tmp_path)), str(tmp_path / 'out'), shard_size=4, workers=2, progress=False)
    assert report['written'] == 3 and report['captions'] == 4 and report['truncated'] == 0
    assert report['skipped'] == EXPECTED_SKIPPED
    assert json.loads((tmp_path / 'out' / 'report.json').read_text()) == report
    records = _by_id(tmp_path / 'out')
    assert {key: record.captions for key, record in records.items()} == GOOD_CAPTIONS  # each with its own image
    stored = np.asarray(Image.open(io.BytesIO(records['good1.png'].image)))
    assert records['good1.png'].format == 'png' and (stored == [255, 0, 0]).all()
    assert records['good3.webp'].format == 'webp' and records['good2.jpg'].format == 'jpeg'


def test_long_captions_can_be_truncated_instead(tmp_path):
    report = prepare(
        str(_broken_csv(tmp_path)), str(tmp_path / 'out'), truncate=True, max_caption_chars=50, progress=False
    )
    assert report['written'] == 4 and report['truncated'] == 1
    expected = {**EXPECTED_SKIPPED, 'no_caption': 2}
    del expected['caption_too_long']
    assert report['skipped'] == expected
    assert _by_id(tmp_path / 'out')['long.png'].captions == ['x' * 50]


def test_webdataset_with_broken_entries(tmp_path):
    report = prepare(str(_broken_webdataset(tmp_path)), str(tmp_path / 'out'), shard_size=3, progress=False)
    # The tar layout writes one caption per key (.txt), so good1 keeps 'a red square' and good3 its first caption.
    assert report['written'] == 3 and report['captions'] == 3
    assert report['skipped'] == {**EXPECTED_SKIPPED, 'empty_caption': 1}
    records = _by_id(tmp_path / 'out')
    assert {key: record.captions for key, record in records.items()} == {
        '00000.tar/000000000': ['a red square'],
        '00000.tar/000000001': ['a blue square'],
        '00000.tar/000000002': ['a green square'],
    }


def test_resume_rewrites_no_finished_shard(tmp_path):
    table = _broken_csv(tmp_path)
    out = tmp_path / 'out'
    first = prepare(str(table), str(out), shard_size=2, workers=2, progress=False)
    shards = sorted(name for name in os.listdir(out) if name.startswith('shard-'))
    assert len(shards) == 10  # 5 shards x (.array_record + .json)
    stamp = lambda name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns)
    before = {name: stamp(name) for name in shards}
    # A run killed while writing shard 3: its files are absent, a temporary file is left behind.
    for name in ('shard-00003.array_record', 'shard-00003.json', 'report.json', 'index.json'):
        os.remove(out / name)
    (out / 'shard-00003.array_record.tmp-99999').write_bytes(b'half a shard')
    second = prepare(str(table), str(out), shard_size=2, workers=2, progress=False)
    assert second == first
    for name, value in before.items():
        if not name.startswith('shard-00003'):
            assert stamp(name) == value, f'{name} was rewritten'
    assert _by_id(out).keys() == GOOD_CAPTIONS.keys()
    again = {name: stamp(name) for name in shards}
    assert prepare(str(table), str(out), shard_size=2, progress=False) == first
    assert {name: stamp(name) for name in shards} == again


def test_labels_and_class_names(tmp_path):
    for name, colour in (('a.png', 'red'), ('b.png', 'blue'), ('c.png', 'green')):
        (tmp_path / name).write_bytes(_image_bytes(colour, 'PNG'))
    with open(tmp_path / 'labelled.csv', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerows([['image', 'caption', 'label'], ['a.png', 'red', 0], ['b.png', 'blue', 1], ['c.png', 'x', 7]])
    (tmp_path / 'names.txt').write_text('red thing\nblue thing\n')
    report = prepare(
        str(tmp_path / 'labelled.csv'),
        str(tmp_path / 'out'),
        class_names_file=str(tmp_path / 'names.txt'),
        progress=False,
    )
    assert report['written'] == 2 and report['skipped'] == {'bad_label': 1}
    records = RecordSet(str(tmp_path / 'out'))
    assert records.class_names == ['red thing', 'blue thing']
    assert {r.id: r.label for r in records.records(range(2))} == {'a.png': 0, 'b.png': 1}


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    command = [sys.executable, '-m', 'vlp_jax.data.prepare', *map(str, args), '--no_progress']
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_prints_the_summary_and_the_report(tmp_path):
    result = _cli(_broken_csv(tmp_path), tmp_path / 'out', '--shard_size', 4)
    assert result.returncode == 0, result.stderr
    assert 'wrote 3 images with 4 captions' in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])['skipped'] == EXPECTED_SKIPPED


@pytest.mark.parametrize(
    'content, expected',
    [
        ('picture,caption\nx.png,a\n', "has no 'image' column"),
        (None, 'does not exist'),
    ],
)
def test_user_errors_are_one_line(tmp_path, content, expected):
    table = tmp_path / 'pairs.csv'
    if content is not None:
        table.write_text(content)
    result = _cli(table, tmp_path / 'out')
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_rerun_with_other_settings_is_refused(tmp_path):
    table = _broken_csv(tmp_path)
    assert _cli(table, tmp_path / 'out', '--shard_size', 4).returncode == 0
    result = _cli(table, tmp_path / 'out', '--shard_size', 5)
    assert result.returncode == 2 and 'shard_size' in result.stderr


def test_sigkill_mid_run_then_rerun_rewrites_no_finished_shard(tmp_path):
    """A real kill: prepare (and its worker processes) SIGKILLed once a few shards are finished."""
    import signal
    import time

    rng = np.random.default_rng(0)
    rows = [['image', 'caption']]
    for i in range(600):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f'{i}.png')
        rows.append([f'{i}.png', f'photo number {i}'])
    with open(tmp_path / 'many.csv', 'w', newline='') as handle:
        csv.writer(handle).writerows(rows)
    out = tmp_path / 'out'
    command = [sys.executable, '-m', 'vlp_jax.data.prepare', str(tmp_path / 'many.csv'), str(out)]
    command += ['--shard_size', '5', '--workers', '1', '--no_progress']
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    finished = lambda: sorted(p.name for p in out.glob('shard-*.json')) if out.exists() else []
    deadline = time.monotonic() + 120
    while len(finished()) < 3:
        assert process.poll() is None and time.monotonic() < deadline, 'prepare ended before it could be killed'
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = finished()
    assert len(done) < 120 and not (out / 'report.json').exists(), 'the kill came too late to test a resume'
    stamp = lambda path: (os.stat(path).st_ino, os.stat(path).st_mtime_ns)
    before = {name: stamp(out / name) for name in done}
    before.update({name[:-5] + '.array_record': stamp(out / (name[:-5] + '.array_record')) for name in done})

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {name: stamp(out / name) for name in before} == before  # no finished shard was rewritten
    report = json.loads((out / 'report.json').read_text())
    assert report['written'] == 600 and report['skipped'] == {}
    assert sorted(_by_id(out)) == sorted(f'{i}.png' for i in range(600))
