"""vlp_jax: vision-language pretraining that does not punish false negatives."""

import os as _os
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from vlp_jax.api import LoadedModel

# Quiet the libraries' start-up chatter (TF C++ info lines, transformers' "PyTorch not
# found" notice) before any of them is imported; a user's own settings win.
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')


def load(path: str | _os.PathLike, batch_size: int = 64) -> 'LoadedModel':
    """A trained model from a workdir or checkpoint: `.encode_images`, `.encode_texts`, `.zero_shot_classifier`.

    See vlp_jax/api.py. Imported on first call, so `import vlp_jax` stays free of JAX start-up.
    """
    from vlp_jax.api import load as _load

    return _load(path, batch_size)
