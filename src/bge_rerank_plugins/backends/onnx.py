"""Deprecated location, kept for one release: use :mod:`bge_rerank_plugins.runtime.backends.onnx`.

This name is the moved module itself, so its functions, and patches of them, are shared.
"""

import sys

from ..runtime.backends import onnx

sys.modules[__name__] = onnx
