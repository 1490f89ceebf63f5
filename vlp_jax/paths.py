"""Workdir and checkpoint paths: local directories or object stores (gs://, s3://) alike.

A pod run writes its workdir to a bucket every worker can reach. Every path the run
writes or reads goes through `as_path`, an `etils.epath.Path`: local paths are made
absolute (the run may chdir; orbax wants absolute paths), URL-like ones are kept as
they are and reached through epath's backends.
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for an object-store URL such as gs://bucket/run."""
    return '://' in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: absolute when local, unchanged when remote."""
    text = os.fspath(path)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))
