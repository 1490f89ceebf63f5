"""prepare: tables and webdataset shards -> records; broken entries are counted and named exactly, resuming
rewrites nothing, a re-run after the inputs changed rebuilds exactly the shards they feed."""

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


# Every skipped row of the broken CSV (line 1 is the header): (line, key, reason), in input order.
EXPECTED_ROWS = [
    (6, 'good3.webp', 'empty_caption'),
    (7, 'truncated.jpg', 'corrupt_image'),
    (8, 'text.jpg', 'not_an_image'),
    (9, 'empty.png', 'empty_caption'),
    (9, 'empty.png', 'no_caption'),
    (10, 'latin1.png', 'invalid_utf8'),
    (10, 'latin1.png', 'no_caption'),
    (11, 'long.png', 'caption_too_long'),
    (11, 'long.png', 'no_caption'),
    (12, 'missing.png', 'missing_image'),
]


def test_csv_with_broken_entries_keeps_the_good_and_counts_the_rest(tmp_path):
    report = prepare(str(_broken_csv(tmp_path)), str(tmp_path / 'out'), shard_size=4, workers=2, progress=False)
    assert report['written'] == 3 and report['captions'] == 4 and report['truncated'] == 0
    assert report['skipped'] == EXPECTED_SKIPPED
    # report.json names each skipped row: the file, its line, the image's key and the reason
    rows = report['skipped_rows']
    assert [(r['line'], r['key'], r['reason']) for r in rows] == EXPECTED_ROWS
    assert {r['file'] for r in rows} == {'pairs.csv'}
    assert rows[-1]['detail'].startswith('no file ') and rows[7]['detail'] == '10000 characters'
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
    named = {(r['file'], r['key'], r['reason']) for r in report['skipped_rows'] if 'line' not in r}
    assert ('00000.tar', '00000.tar/000000004', 'not_an_image') in named
    assert ('00001.tar', '00001.tar/000010003', 'missing_image') in named and len(named) == 9
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
    assert second.pop('last_run') == {'kept_shards': 4, 'new_shards': 1, 'rebuilt_shards': 0, 'removed_shards': 0}
    assert first.pop('last_run')['new_shards'] == 5 and second == first
    for name, value in before.items():
        if not name.startswith('shard-00003'):
            assert stamp(name) == value, f'{name} was rewritten'
    assert _by_id(out).keys() == GOOD_CAPTIONS.keys()
    again = {name: stamp(name) for name in shards}
    third = prepare(str(table), str(out), shard_size=2, progress=False, rebuild=False)
    assert third.pop('last_run')['kept_shards'] == 5 and third == first
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


def test_cli_prints_the_summary_the_first_skipped_rows_and_the_report(tmp_path):
    result = _cli(_broken_csv(tmp_path), tmp_path / 'out', '--shard_size', 4)
    assert result.returncode == 0, result.stderr
    assert 'wrote 3 images with 4 captions' in result.stdout
    assert f'skipped rows (all 10 are listed in {tmp_path / "out" / "report.json"}):' in result.stdout
    assert '  pairs.csv line 8 (text.jpg): not_an_image' in result.stdout and '... and 5 more' in result.stdout
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


def _shard_stamps(out):
    """(inode, mtime, bytes) of every shard file: a rewritten shard differs in at least one."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob('shard-*'))}


def _served(out):
    """What training would read: {id: (captions, decoded pixels)}."""
    return {
        key: (record.captions, np.asarray(Image.open(io.BytesIO(record.image)).convert('RGB')))
        for key, record in _by_id(out).items()
    }


def test_rerun_follows_each_input_change_and_rewrites_only_the_shards_it_feeds(tmp_path):
    """The stale-data bug: a re-run after editing a caption kept serving the old one. Each change below
    must reach the served records, rebuild only its own shard, and be refused under --no_rebuild."""
    colours = ['red', 'green', 'blue', 'yellow', 'purple', 'orange']  # 6 images, 2 per shard
    for number, colour in enumerate(colours):
        (tmp_path / f'{number}.png').write_bytes(_image_bytes(colour, 'PNG'))
    rows = [['image', 'caption']] + [[f'{n}.png', f'a {c} square'] for n, c in enumerate(colours)]

    def write_table():
        with open(tmp_path / 'pairs.csv', 'w', newline='') as handle:
            csv.writer(handle).writerows(rows)

    write_table()
    out = tmp_path / 'out'
    first = prepare(str(tmp_path / 'pairs.csv'), str(out), shard_size=2, progress=False)
    assert first['written'] == 6

    def rerun(rebuilt_shard, change, served_now):
        """Re-runs prepare: the records follow the change (served_now), and only `rebuilt_shard` is rewritten."""
        before = _shard_stamps(out)
        report = prepare(str(tmp_path / 'pairs.csv'), str(out), shard_size=2, progress=False)
        served = _served(out)
        assert served_now(served), f'the records do not follow the change ({change}): {served}'
        assert report['last_run'] == {'kept_shards': 2, 'new_shards': 0, 'rebuilt_shards': 1, 'removed_shards': 0}
        after = _shard_stamps(out)
        for name, stamp in before.items():
            rewritten = after.get(name) != stamp
            assert rewritten == name.startswith(rebuilt_shard), f'{name} rewritten={rewritten} ({change})'
        return report

    rows[3][1] = 'a deep blue square'  # 1. edit one caption (image 2, shard 1)
    write_table()
    rerun('shard-00001', 'caption edited', lambda served: served['2.png'][0] == ['a deep blue square'])

    rows.append(['0.png', 'a scarlet square'])  # 2. add a caption to an existing image (shard 0)
    write_table()
    rerun('shard-00000', 'caption added', lambda served: served['0.png'][0] == ['a red square', 'a scarlet square'])

    os.remove(tmp_path / '5.png')  # 3. delete an image (shard 2)
    report = rerun('shard-00002', 'image deleted', lambda served: '5.png' not in served)
    assert report['written'] == 5
    assert [(r['line'], r['key'], r['reason']) for r in report['skipped_rows']] == [(7, '5.png', 'missing_image')]

    (tmp_path / '3.png').write_bytes(_image_bytes('white', 'PNG', size=(12, 9)))  # 4. new bytes (shard 1)
    rerun('shard-00001', 'image bytes changed', lambda served: (served['3.png'][1] == 255).all())
    served = _served(out)
    assert sorted(served) == ['0.png', '1.png', '2.png', '3.png', '4.png']
    assert served['1.png'][0] == ['a green square'] and (served['1.png'][1] == [0, 128, 0]).all()


def test_cli_no_rebuild_refuses_in_one_line(tmp_path):
    table = _broken_csv(tmp_path)
    assert _cli(table, tmp_path / 'out', '--shard_size', 4).returncode == 0
    table.write_bytes(table.read_bytes().replace(b'a blue square', b'a navy square'))
    before = _shard_stamps(tmp_path / 'out')
    result = _cli(table, tmp_path / 'out', '--shard_size', 4, '--no_rebuild')
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'the inputs of 1 of the 3 finished shards' in result.stderr and '(shard-00000)' in result.stderr
    assert _shard_stamps(tmp_path / 'out') == before
    result = _cli(table, tmp_path / 'out', '--shard_size', 4)
    assert result.returncode == 0 and 'rebuilt 1, removed 0, kept 2 unchanged' in result.stdout, result.stdout
    assert _by_id(tmp_path / 'out')['good2.jpg'].captions == ['a navy square']


def _tiff(pages, **options):
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pages, **options)
    return buffer.getvalue()


def test_images_pillow_or_tifffile_read_are_converted_or_named_unsupported(tmp_path):
    """A valid multi-page float64 TIFF was counted as not_an_image. Real images are converted to 8-bit RGB
    PNGs (the report says how) or skipped as unsupported_image with the reason; never not_an_image."""
    rng = np.random.default_rng(0)
    float_pages = rng.random((3, 8, 10, 3))  # three pages of float64 RGB in [0, 1]
    grey16 = (rng.random((8, 10)) * 65535).astype(np.uint16)
    signed = rng.integers(-1000, 1000, (8, 10)).astype(np.int16)
    files = {
        'pages.tif': _tiff(float_pages, photometric='rgb'),
        'grey16.tif': _tiff(grey16),
        'signed.tif': _tiff(signed),
        'channels5.tif': _tiff(
            rng.random((8, 10, 5)).astype(np.float32), photometric='minisblack', planarconfig='contig'
        ),
        'broken.tif': b'II*\x00' + b'\x00' * 40,
        'cmyk.jpg': _cmyk_jpeg(),
    }
    rows = [['image', 'caption']]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        rows.append([name, f'the {name} image'])
    with open(tmp_path / 'images.csv', 'w', newline='') as handle:
        csv.writer(handle).writerows(rows)
    report = prepare(str(tmp_path / 'images.csv'), str(tmp_path / 'out'), progress=False)
    assert report['skipped'] == {'unsupported_image': 1, 'corrupt_image': 1}, report
    reasons = {r['key']: (r['reason'], r.get('detail', '')) for r in report['skipped_rows']}
    assert reasons['channels5.tif'][0] == 'unsupported_image' and '(8, 10, 5)' in reasons['channels5.tif'][1]
    assert reasons['broken.tif'][0] == 'corrupt_image'
    how = {r['key']: r['how'] for r in report['converted_rows']}
    assert set(how) == {'pages.tif', 'grey16.tif', 'signed.tif', 'cmyk.jpg'} and report['converted'] == 4
    assert 'float64 TIFF, page 1 of 3, float64 values in [0, 1] times 255' in how['pages.tif']
    assert 'stretched' in how['signed.tif']
    served = _served(tmp_path / 'out')
    np.testing.assert_array_equal(served['pages.tif'][1], np.rint(float_pages[0] * 255))  # the first page
    np.testing.assert_array_equal(served['grey16.tif'][1][..., 0], np.rint(grey16 / 257))
    stretched = np.rint((signed - signed.min()) / (signed.max() - signed.min()) * 255)
    np.testing.assert_array_equal(served['signed.tif'][1][..., 1], stretched)
    assert all(record.format == 'png' for record in _by_id(tmp_path / 'out').values())


def _cmyk_jpeg():
    buffer = io.BytesIO()
    Image.new('CMYK', (10, 8), (0, 255, 255, 0)).save(buffer, format='JPEG')
    return buffer.getvalue()
