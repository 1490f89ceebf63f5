"""Which input path builds the training batches: tf.data (data/tf_augment.py) or plain numpy
(data/np_augment.py), chosen by `data.backend`.

Both paths share the loader (TrainPipeline.raw_batch: order, per-process slice, captions, crop
boxes and flips), so they give the same batches up to float rounding of the resized pixels. The
numpy path exists for machines with JAX but no TensorFlow (a GPU box): it feeds in-memory sources
(uint8 pixels: the shapes world, Fashion-MNIST) and never imports TensorFlow. Sources that hand
encoded images or read TFDS (a plug-in's `needs_tensorflow`) need the tf.data path.
"""

from __future__ import annotations

import importlib.util

AUTO, TF, NUMPY = 'auto', 'tf', 'numpy'


def tensorflow_installed() -> bool:
    """Whether `import tensorflow` would find the package, asked without importing it (TF's start-up
    costs seconds, and the numpy path must not load it at all)."""
    try:
        return importlib.util.find_spec('tensorflow') is not None
    except (ImportError, ValueError):  # a blocked or half-imported module counts as absent
        return False


def resolve(backend: str) -> str:
    """'tf' or 'numpy': `data.backend` with 'auto' decided by whether TensorFlow is installed."""
    if backend == AUTO:
        return TF if tensorflow_installed() else NUMPY
    assert backend in (TF, NUMPY), backend
    return backend


def why(backend: str) -> str:
    """How `data.backend` came to resolve as it did, for the lines that name the input path."""
    if backend == AUTO:
        return "data.backend='auto' and TensorFlow is " + ('installed' if tensorflow_installed() else 'not installed')
    return f'data.backend={backend!r}'


def problem(backend: str) -> str | None:
    """One sentence when `data.backend` asks for what this machine lacks, else None."""
    if backend == TF and not tensorflow_installed():
        return (
            "config key data.backend='tf' needs TensorFlow, which is not installed here; install tensorflow-cpu or "
            "set data.backend='auto' (numpy input path for in-memory sources)."
        )
    return None


def source_problem(backend: str, what: str) -> str:
    """The sentence that refuses a source needing TensorFlow on the numpy path; `what` names it in config terms."""
    return (
        f'{what} needs the tf.data input path (it decodes encoded images or reads TFDS), but the numpy path is '
        f"chosen ({why(backend)}); install tensorflow-cpu and set data.backend='auto' or 'tf', or use an "
        'in-memory source (shapes, fashion_mnist).'
    )
