"""``python -m bge_rerank_plugins.cli``: the same as the ``bge-rerank`` command."""

from __future__ import annotations

import sys

from .entry import main

if __name__ == "__main__":
    sys.exit(main())
