"""The record path's throughput (read, JPEG decode, crop, tokenise) next to what the train step needs.

    python benchmarks/record_throughput.py [--config configs/shapes_tiny.py] [--records 1024] [--steps 20]

Writes `--records` JPEG records (scikit-image's real photos, 300-1400 px, re-encoded at
quality 90, cycled) to a temporary folder, times the train step of the config on a fixed
batch (its need: steps/s x batch), then the training pipeline alone on those records at
224 px and at the config's own image size. Prints one JSON line per figure; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

from common import load_config, train_step_seconds

JPEG_QUALITY = 90


def write_jpeg_records(directory: str, count: int) -> float:
    """`count` records cycling through the example photos as JPEG; returns their mean encoded size in KiB."""
    from array_record.python import array_record_module
    from PIL import Image

    from vlp_jax.data import records as records_lib
    from vlp_jax.data.example_photos import photo_captions, skimage_data_dir

    encoded = []
    for photo in photo_captions():
        buffer = io.BytesIO()
        Image.open(os.path.join(skimage_data_dir(), photo['image'])).convert('RGB').save(
            buffer, format='JPEG', quality=JPEG_QUALITY
        )
        encoded.append((buffer.getvalue(), photo['captions']))
    name = 'shard-00000' + records_lib.SHARD_SUFFIX
    writer = array_record_module.ArrayRecordWriter(os.path.join(directory, name), records_lib.WRITER_OPTIONS)
    for i in range(count):
        image, captions = encoded[i % len(encoded)]
        writer.write(records_lib.encode_record(records_lib.Record(f'{i}', captions, image, 'jpeg')))
    writer.close()
    records_lib.write_index(directory, [{'file': name, 'records': count}], None)
    return sum(len(image) for image, _ in encoded) / len(encoded) / 1024


def pipeline_rate(config, directory: str, image_size: int, steps: int) -> float:
    """Examples/s of the training pipeline alone on the records, after its first batch."""
    from vlp_jax import setup
    from vlp_jax.data.record_source import RecordSource

    config = config.copy_and_resolve_references()
    config.model.image_size = image_size
    source = RecordSource(directory)
    pipeline = setup.pipeline(config, source, setup.make_sampler(config, source))
    batches = pipeline.iterate(0, steps + 1)
    next(batches)  # start the workers
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return config.batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='configs/shapes_tiny.py')
    parser.add_argument('--records', type=int, default=1024)
    parser.add_argument('--steps', type=int, default=20)
    args, rest = parser.parse_known_args()

    import jax

    config = load_config(args.config, rest)
    step_rate = config.batch_size / train_step_seconds(config, args.steps)
    device = f'{jax.device_count()} x {jax.devices()[0].platform}'
    print(
        json.dumps(
            {
                'what': 'train step (its need)',
                'config': args.config,
                'image_size': int(config.model.image_size),
                'batch': int(config.batch_size),
                'examples_per_sec': round(step_rate, 1),
                'devices': device,
            }
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as directory:
        kib = write_jpeg_records(directory, args.records)
        for size in dict.fromkeys((224, int(config.model.image_size))):
            rate = pipeline_rate(config, directory, size, args.steps)
            line = {
                'what': 'record pipeline (read, JPEG decode, random resized crop, flip, tokenise)',
                'image_size': size,
                'mean_jpeg_kib': round(kib, 1),
                'workers': int(config.data.workers),
                'examples_per_sec': round(rate, 1),
                'pipeline_over_step': round(rate / step_rate, 2),
                'target': '>= 3x',
                'cpu_cores': os.cpu_count(),
            }
            print(json.dumps(line), flush=True)


if __name__ == '__main__':
    main()
