"""Training losses for cross-encoder rerankers, in the sentence-transformers loss protocol.

Two objectives are used by :class:`~bge_rerank_plugins.finetune.engine.CrossEncoderFinetuneEngine`:

* ``"bce"``: pointwise binary cross-entropy on (query, passage, label) rows, the objective of
  LlamaIndex's engine (sentence-transformers' ``BinaryCrossEntropyLoss`` is used for it).
* ``"softmax"`` (:class:`GroupedSoftmaxLoss`): one query with a group of passages (positives
  first, then negatives); the raw logits of the group go through a softmax and the loss is the
  cross-entropy to the relevance labels, as in FlagEmbedding's reranker training. Optionally it
  adds a KL term that pulls the group's softmax towards a teacher's scores (distillation).

A grouped batch row has the columns ``query`` (str), ``docs`` (list of str), ``teacher`` (list of
floats, optional) and ``label`` (list of floats, the relevance grades of ``docs``).

Example:
    >>> import torch
    >>> from bge_rerank_plugins.finetune.losses import grouped_softmax_loss
    >>> logits = torch.tensor([[2.0, 0.0, 0.0]])
    >>> labels = torch.tensor([[1.0, 0.0, 0.0]])
    >>> round(float(grouped_softmax_loss(logits, labels)), 4)
    0.2395
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GroupedSoftmaxLoss", "grouped_softmax_loss"]

_PAD = -1e4  # logit given to padding slots of short groups (exp() is 0 in float32)


def grouped_softmax_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    teacher: Tensor | None = None,
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> Tensor:
    """Softmax cross-entropy of each group's logits against its relevance labels.

    Args:
        logits: ``(groups, group_size)`` raw model scores.
        labels: same shape, relevance grades (>= 0); the target distribution is the labels
            normalised to sum 1 over the group (one positive gives the usual one-hot target).
        mask: same shape, True where the slot holds a real passage (groups may be ragged).
        teacher: same shape, teacher scores (logits); adds ``distill_weight`` times the KL
            divergence from ``softmax(teacher / temperature)`` to the student's softmax.
        distill_weight: weight of the teacher term in [0, 1]; the label term gets ``1 - weight``.
        temperature: softens both distributions in the teacher term.

    Returns:
        The mean loss over the groups that have at least one positive (scalar tensor).
    """
    if mask is None:
        mask = torch.ones_like(logits, dtype=torch.bool)
    logits = logits.float().masked_fill(~mask, _PAD)
    labels = labels.float().clamp_min(0).masked_fill(~mask, 0.0)
    log_probs = torch.log_softmax(logits, dim=-1)
    total = labels.sum(dim=-1, keepdim=True)
    has_positive = total.squeeze(-1) > 0
    target = labels / total.clamp_min(1e-12)
    label_loss = -(target * log_probs).sum(dim=-1)
    label_loss = label_loss[has_positive].mean() if bool(has_positive.any()) else logits.sum() * 0.0
    if teacher is None or distill_weight <= 0:
        return label_loss
    teacher_logp = torch.log_softmax(teacher.float().masked_fill(~mask, _PAD) / temperature, dim=-1)
    student_logp = torch.log_softmax(logits / temperature, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).masked_fill(~mask, 0.0).sum(-1)
    kl_loss = kl.mean() * temperature**2
    return (1.0 - distill_weight) * label_loss + distill_weight * kl_loss


class GroupedSoftmaxLoss(nn.Module):
    """sentence-transformers loss: grouped softmax cross-entropy (+ optional distillation).

    Inputs are the columns ``(query, docs[, teacher])`` and the label column (a list of grades per
    row); see the module docstring. It works with ``CrossEncoderTrainer``.

    Args:
        model: the ``sentence_transformers.CrossEncoder`` being trained (``num_labels=1``).
        distill_weight: weight of the teacher KL term (0 disables it).
        temperature: distillation temperature.
        mini_batch_size: score the pairs of a batch in chunks of this many (memory), or all at once.
    """

    def __init__(
        self,
        model: Any,
        *,
        distill_weight: float = 0.0,
        temperature: float = 1.0,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be within [0, 1], got {distill_weight!r}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.model = model
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)
        self.mini_batch_size = mini_batch_size

    def forward(
        self,
        inputs: list[Any],
        labels: list[Tensor] | Tensor,
        prompt: str | None = None,
        task: str | None = None,
    ) -> Tensor:
        """Score every (query, doc) pair of the batch and return the grouped loss."""
        from sentence_transformers.util import batch_to_device

        if len(inputs) not in (2, 3):
            raise ValueError(
                "GroupedSoftmaxLoss expects the columns (query, docs) or (query, docs, teacher), "
                f"got {len(inputs)} input columns."
            )
        queries, docs_list = inputs[0], inputs[1]
        teachers = inputs[2] if len(inputs) == 3 else None
        sizes = [len(docs) for docs in docs_list]
        width = max(sizes)
        pairs = [(q, d) for q, docs in zip(queries, docs_list) for d in docs]
        chunk = self.mini_batch_size or len(pairs)
        parts = []
        for start in range(0, len(pairs), chunk):
            features = self.model.preprocess(pairs[start : start + chunk], prompt=prompt, task=task)
            features = batch_to_device(features, self.model.device)
            parts.append(self.model(features)["scores"].view(-1))
        flat = torch.cat(parts).float()
        device = flat.device
        groups = len(sizes)
        index = torch.tensor(
            [row * width + col for row, size in enumerate(sizes) for col in range(size)],
            device=device,
        )
        logits = torch.full((groups * width,), _PAD, device=device).index_copy(0, index, flat)
        logits = logits.view(groups, width)
        mask = torch.zeros(groups * width, dtype=torch.bool, device=device)
        mask[index] = True
        mask = mask.view(groups, width)
        label_matrix = torch.zeros(groups, width, device=device)
        for row, grades in enumerate(labels):
            grades = torch.as_tensor(grades, dtype=torch.float32, device=device).view(-1)
            label_matrix[row, : grades.numel()] = grades
        teacher_matrix = None
        if teachers is not None and self.distill_weight > 0:
            teacher_matrix = torch.zeros(groups, width, device=device)
            for row, scores in enumerate(teachers):
                values = torch.as_tensor(scores, dtype=torch.float32, device=device).view(-1)
                teacher_matrix[row, : values.numel()] = values
        return grouped_softmax_loss(
            logits,
            label_matrix,
            mask=mask,
            teacher=teacher_matrix,
            distill_weight=self.distill_weight,
            temperature=self.temperature,
        )

    def get_config_dict(self) -> dict[str, Any]:
        """Parameters recorded in the model card by sentence-transformers."""
        return {"distill_weight": self.distill_weight, "temperature": self.temperature}
