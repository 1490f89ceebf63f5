"""vlp_jax: vision-language pretraining that does not punish false negatives."""

import os as _os

# Quiet the libraries' start-up chatter (TF C++ info lines, transformers' "PyTorch not
# found" notice) before any of them is imported; a user's own settings win.
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
