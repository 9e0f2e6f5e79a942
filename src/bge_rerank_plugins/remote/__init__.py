"""Score on a rerank server instead of in-process: :class:`RemoteScorer` has the
:class:`~bge_rerank_plugins.CrossEncoderScorer` API (``score``, ``score_pairs``,
``score_many``, ``rank`` and their async forms) and sends the pairs to ``bge-rerank serve``,
text-embeddings-inference, a Cohere-compatible API or vLLM.

The package, by job: :mod:`.dialects` (the three wire formats), :mod:`.http` (one request with
bounded retries on 429/503, honouring ``Retry-After``) and :mod:`.scorer` (``RemoteScorer``:
splitting calls into requests of the server's size and putting the scores back in order).

>>> from bge_rerank_plugins.remote import RemoteScorer
>>> RemoteScorer("http://127.0.0.1:8080/v2/rerank").dialect
'cohere'
"""

from __future__ import annotations

from .http import RemoteRerankError
from .scorer import DEFAULT_MAX_BATCH, RemoteScorer

__all__ = ["DEFAULT_MAX_BATCH", "RemoteRerankError", "RemoteScorer"]
