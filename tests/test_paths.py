"""Workdir paths: a bucket URL stays a URL (it once became ./gs:/bucket/run), a local path becomes absolute."""

import os

from vlp_jax.checkpointing import Checkpointer
from vlp_jax.metrics import METRICS_FILE, MetricsWriter, truncate_after
from vlp_jax.paths import as_path, is_remote


def test_bucket_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_remote('gs://bucket/run') and not is_remote('runs/a')
    assert str(as_path('gs://bucket/run/checkpoints')) == 'gs://bucket/run/checkpoints'
    assert str(as_path('runs/a')) == os.path.join(str(tmp_path), 'runs', 'a')
    # Building a checkpointer touches nothing: the URL is kept for orbax to reach.
    assert (
        str(Checkpointer(as_path('gs://bucket/run') / 'checkpoints', keep=1).directory) == 'gs://bucket/run/checkpoints'
    )
    assert not os.path.exists(tmp_path / 'gs:')


def test_metrics_writer_and_truncation_through_epath(tmp_path):
    writer = MetricsWriter(str(tmp_path), enabled=True)
    for step in (5, 10, 15):
        writer.write(step, {'train/loss': 1.0 / step})
    writer.close()
    truncate_after(str(tmp_path), 10)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [line.split(',')[0] for line in lines] == ['{"step": 5', '{"step": 10']
