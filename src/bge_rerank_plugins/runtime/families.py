"""Model families: which checkpoints the scorer can run, and how it reads a score from them.

A family is one :class:`ModelFamily` entry in :data:`FAMILIES`. Today there is one,
``"sequence-classification"``: cross-encoders loaded with ``transformers``'
``AutoModelForSequenceClassification``
(:func:`~bge_rerank_plugins.runtime.loading.load_cross_encoder`), fed the tokenizer's
(query, passage) pair encoding, whose score is the relevance logit (one label) or the log-odds
of "relevant" (two labels).

Where a new family plugs in (say a causal LM that answers "Yes" or "No", such as
bge-reranker-v2-gemma): one entry here with its own ``check`` (a config this family can run)
and ``score`` (the logit of "Yes" at the last token, against "No"), a loader for its
``transformers`` class next to
:func:`~bge_rerank_plugins.runtime.loading.load_cross_encoder`, and its prompt in the pair
encoding. The backends need no change: a runner turns a padded batch into logits
whatever they mean.

>>> import torch
>>> FAMILIES["sequence-classification"].score(torch.tensor([[0.5, 2.0]]))
tensor([1.5000])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["FAMILIES", "ModelFamily"]


@dataclass(frozen=True)
class ModelFamily:
    """One kind of checkpoint the scorer runs.

    Attributes:
        name: the family's key in :data:`FAMILIES`.
        check: ``check(config, model_name)`` raises ValueError, naming the model and the fix,
            for a ``transformers`` config this family cannot score.
        score: ``score(logits) -> scores``, one raw relevance score per row (float32; its
            sigmoid is the probability of "relevant").
    """

    name: str
    check: Callable[[Any, str], None]
    score: Callable[[torch.Tensor], torch.Tensor]


def _check_labels(config: Any, model_name: str) -> None:
    num_labels = getattr(config, "num_labels", 1)
    if num_labels not in (1, 2):
        raise ValueError(
            f"model={model_name!r} has {num_labels} output labels; a reranker needs 1 "
            "(a relevance logit) or 2 (not relevant / relevant)."
        )


def _classifier_score(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[-1] == 2:
        # Log-odds of "relevant": its sigmoid equals the softmax probability of label 1.
        return logits[:, 1] - logits[:, 0]
    return logits[:, 0]


#: Every family the scorer can run, by name.
FAMILIES: dict[str, ModelFamily] = {
    "sequence-classification": ModelFamily(
        name="sequence-classification", check=_check_labels, score=_classifier_score
    ),
}
