"""Deprecated location, kept for one release: use
:mod:`bge_rerank_plugins.runtime.backends.torch_int8`.

This name is the moved module itself, so its functions, and patches of them, are shared.
"""

import sys

from ..runtime.backends import torch_int8

sys.modules[__name__] = torch_int8
