"""What ``finetune()`` runs, and what it decides on the way (every decision is logged).

1. The held-out yardstick (:mod:`.holdout`): nDCG@10 of a random order, the given order, BM25
   and the base model on the held-out queries.
2. Learning rates (``"auto"``): 2e-4 for the encoder and 10x that for the head when the base
   model ranks the held-out queries at chance (an untrained head); 2e-5 for both when it
   already ranks them (a trained reranker, which higher rates would wreck).
3. Warm start (:mod:`.warm_start`): when the head is untrained and the base encoder's own
   similarity blended with BM25 ranks clearly better, every training passage gets that blend as
   a teacher score (``loss="auto"`` becomes ``"distill"``: the labels' softmax plus the KL term
   to the teacher). The requested epochs assume a head that can already rank (LlamaIndex's
   default base is a trained reranker); a fresh head first gets a warm-start phase on the
   teacher's scores alone (no labels: the labels are read by the requested epochs only), for the
   part of the time budget the requested epochs will not need (measured on its first steps), at
   most 4 passes. Then the requested epochs run.
4. Batch size: LlamaIndex counts samples per batch; grouped training takes
   ``batch_size / (1 + num_negatives)`` groups per step, so a step costs what the user asked.
5. The labelled epochs, the best checkpoint on the held-out queries, and the figures after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .holdout import HeldOutReport

__all__ = ["TRAIN_RATES", "Outcome", "learning_rates", "run"]

logger = logging.getLogger(__name__)

#: (encoder, head) learning rates for an untrained head and for a trained reranker.
TRAIN_RATES = {"untrained": (2e-4, 2e-3), "trained": (2e-5, 2e-5)}
#: the most passes of the warm-start phase
WARM_START_MAX_EPOCHS = 4
#: the warm start's weight of the teacher term: 1.0 trains on the teacher's scores alone, so the
#: labels are read only by the requested epochs (measured on a split of SciFact train: 1.0 at
#: the training length beat 0.5 at 128 tokens, +0.034 against +0.017 nDCG@10 over BM25)
WARM_START_DISTILL_WEIGHT = 1.0
#: a warm-start phase shorter than this is not worth its set-up
WARM_START_MIN_SECONDS = 60.0
#: steps the warm-start phase times before it sizes its share of the budget
PROBE_STEPS = 5


@dataclass
class Outcome:
    """What :func:`run` did: the main phase's trainer, its seconds, the resumed step, the
    held-out report and the decisions (for ``training_summary.json``)."""

    trainer: Any
    seconds: float
    resumed_step: int | None
    report: HeldOutReport | None
    decisions: dict[str, Any] = field(default_factory=dict)


def learning_rates(config: Any, head_trained: bool | None) -> tuple[float, float | None, str]:
    """The (encoder, head) learning rates for ``config`` and why (``"auto"`` resolved)."""
    kind = "trained" if head_trained else "untrained"
    why = {
        True: "the base model ranks the held-out queries: a trained head",
        False: "the base model ranks the held-out queries at chance: an untrained head",
        None: "no held-out queries to tell: the rates for an untrained head",
    }[head_trained]
    lr = config.learning_rate
    if lr == "auto":
        lr = TRAIN_RATES[kind][0]
    head = config.head_learning_rate
    if head == "auto":
        head = lr * TRAIN_RATES[kind][1] / TRAIN_RATES[kind][0]
    return float(lr), head, why


class WarmStartBudget:
    """Sizes the warm-start phase's time budget once its first steps are timed.

    The phase may use whatever the labelled epochs will not: ``available_s`` minus their
    estimated time (``main_pairs`` x the measured seconds per pair).
    """

    def __init__(self, available_s: float, main_pairs: int, pairs_per_step: int) -> None:
        self.available_s = available_s
        self.main_pairs = main_pairs
        self.pairs_per_step = pairs_per_step
        self.seconds_per_pair: float | None = None
        self.trainer: Any = None

    def attach(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_step_end(self, step: int) -> None:
        if step != PROBE_STEPS or self.trainer is None:
            return
        budget = self.trainer.budget
        elapsed = budget.elapsed()
        self.seconds_per_pair = elapsed / (step * self.pairs_per_step)
        share = self.available_s - self.main_pairs * self.seconds_per_pair
        budget.budget_s = max(elapsed, share)
        logger.info(
            "Warm start: %.2f s per pair; the labelled epochs need about %.1f min, so the warm "
            "start gets %.1f min.",
            self.seconds_per_pair,
            self.main_pairs * self.seconds_per_pair / 60,
            budget.budget_s / 60,
        )


def run(engine: Any, config: Any) -> Outcome:
    """Run the phases of ``engine.finetune()`` with ``config`` (resolved, for this run)."""
    from . import holdout as ho
    from .grouping import build_train_dataset
    from .recipe import is_grouped
    from .trainer import make_loss, train
    from .warm_start import MARGIN

    started = time.monotonic()
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    logger.info(
        "Time budget: %s.",
        f"max_minutes={config.max_minutes:g} for teacher scores, warm start, training and "
        "held-out figures (set max_minutes=None for no limit)"
        if budget_s
        else "none (max_minutes=None)",
    )
    decisions: dict[str, Any] = {"max_minutes": config.max_minutes}
    items = engine.held_out
    report = None
    seconds_per_pair = None
    if items:
        report = HeldOutReport(queries=len(items), random=ho.random_ndcg(items))
        if not all(item.label_sorted for item in items):
            report.given = ho.pool_ndcg(items, ho.given_order_scores(items))
        else:
            report.notes.append("the samples list relevant passages first: no given order")
        report.bm25 = ho.pool_ndcg(items, ho.bm25_scores(items, engine.training_passages()))
        base_scores, seconds_per_pair = ho.model_scores(engine.model, items)
        report.base = ho.pool_ndcg(items, base_scores)
        logger.info("Before training: %s.", report.line())
    head_trained = None if report is None else report.base > report.random + MARGIN
    lr, head_lr, why = learning_rates(config, head_trained)
    logger.info("Learning rates: encoder %g, head %s (%s).", lr, head_lr, why)
    decisions.update(learning_rate=lr, head_learning_rate=head_lr)
    config = replace(config, learning_rate=lr, head_learning_rate=head_lr)

    records, loss = engine.training_records(), engine.loss
    warm = _decide_warm_start(engine, config, records, report)
    decisions["warm_start"] = warm.reason
    if warm.use:
        records = with_own_teacher(engine, records)
        if engine.auto_loss:
            loss = "distill"
            logger.info("loss='auto' -> 'distill' (the warm start's teacher scores).")
    decisions["loss"] = loss if isinstance(loss, str) else type(loss).__name__

    batch = steps_batch_size(engine, loss)
    decisions["batch_size"] = batch
    config = replace(config, batch_size=batch)
    if not warm.use and loss == engine.loss:
        dataset = engine.train_dataset  # built by the engine (LlamaIndex soft labels kept)
    else:
        dataset = build_train_dataset(
            records, loss=loss, num_negatives=config.num_negatives, rng=engine.rng, what="dataset"
        )
    group_size = 1 + config.num_negatives if is_grouped(loss) else 1
    main_pairs = len(dataset) * group_size * config.epochs
    reserve_s = 20.0 + (seconds_per_pair or 0.0) * sum(len(i.docs) for i in items or ()) * 2
    if warm.use and not config.resume_from_checkpoint:
        available = (budget_s - (time.monotonic() - started) - reserve_s) if budget_s else None
        warm_data = dataset
        if loss != "distill":  # the labelled epochs use another loss: a teacher column apart
            warm_data = build_train_dataset(
                records,
                loss="distill",
                num_negatives=config.num_negatives,
                rng=engine.rng,
                what="dataset",
            )
        _warm_start_phase(engine, config, warm_data, available, main_pairs, group_size, decisions)
    elif warm.use:
        logger.info("Resuming: the warm-start phase ran before; skipping it.")

    remaining = budget_s - (time.monotonic() - started) - reserve_s if budget_s else None
    run_config = replace(config, max_minutes=max(remaining, 30.0) / 60 if remaining else None)
    logger.info(
        "Training: %d epoch(s) over %d groups, %d per step, max_length %d, loss %s.",
        config.epochs,
        len(dataset),
        batch,
        engine.max_length,
        decisions["loss"],
    )
    trainer, seconds, resumed = train(
        engine.model,
        run_config,
        device=config.device,
        train_dataset=dataset,
        loss=make_loss(loss, engine.model, config.distill_weight),
        evaluator=engine.evaluator,
    )
    engine.model = trainer.model
    if report is not None:
        report.finetuned = ho.pool_ndcg(items, ho.model_scores(engine.model, items)[0])
        report.check()
    return Outcome(trainer, seconds, resumed, report, decisions)


def _decide_warm_start(engine: Any, config: Any, records: list[Any], report: Any) -> Any:
    from . import holdout as ho
    from .data import TrainingGroup
    from .warm_start import MARGIN, WarmStart, decide

    if config.warm_start is False:
        return WarmStart(False, "warm_start=False")
    if any(r.has_scores for r in records):
        return WarmStart(False, "the training data carries teacher scores of its own")
    if report is None:
        return decide(config.warm_start, base=None, teacher=None, random=None)
    if config.warm_start == "auto" and report.base > report.random + MARGIN:
        # a trained head: no need to encode anything to decide
        return decide("auto", base=report.base, teacher=None, random=report.random)
    # each held-out query's passages, in their order, scored by the teacher
    items = engine.held_out
    groups = [TrainingGroup(i.query, i.docs[:1], i.docs[1:]) for i in items]
    scored = with_own_teacher(engine, groups)
    report.teacher = ho.pool_ndcg(items, [[*g.positive_scores, *g.negative_scores] for g in scored])
    choice = decide(
        config.warm_start, base=report.base, teacher=report.teacher, random=report.random
    )
    logger.info("Warm start: %s (%s).", "yes" if choice.use else "no", choice.reason)
    return choice


def _warm_start_phase(
    engine: Any,
    config: Any,
    dataset: Any,
    available_s: float | None,
    main_pairs: int,
    group_size: int,
    decisions: dict[str, Any],
) -> None:
    from .trainer import make_loss, train

    if available_s is not None and available_s < WARM_START_MIN_SECONDS:
        logger.info("Warm start: no time left in the budget for a warm-start phase.")
        decisions["warm_start_steps"] = 0
        return
    sizing = WarmStartBudget(available_s or 0.0, main_pairs, config.batch_size * group_size)
    phase = replace(
        config,
        # without a budget, one pass; with one, what the labelled epochs leave (at most 4)
        epochs=WARM_START_MAX_EPOCHS if available_s else 1,
        max_minutes=available_s / 60 if available_s else None,
        checkpoint_dir=f"{config.checkpoint_dir}/warm-start",
        resume_from_checkpoint=None,
        early_stopping_patience=None,
        max_steps=None,
    )
    logger.info(
        "Warm start: training on the teacher (the base encoder's similarity blended with BM25) "
        "alone (no labels), up to %d "
        "pass(es), in the part of the budget the labelled epochs will not need.",
        phase.epochs,
    )
    trainer, seconds, _ = train(
        engine.model,
        phase,
        device=config.device,
        train_dataset=dataset,
        loss=make_loss("distill", engine.model, WARM_START_DISTILL_WEIGHT),
        evaluator=None,
        step_hooks=[sizing] if available_s else [],
    )
    engine.model = trainer.model
    decisions["warm_start_steps"] = trainer.state.global_step
    decisions["warm_start_minutes"] = round(seconds / 60, 2)
    logger.info("Warm start: %d steps in %.1f min.", trainer.state.global_step, seconds / 60)


def with_own_teacher(engine: Any, records: Sequence[Any]) -> list[Any]:
    """``records`` with the warm start's teacher scores: the base encoder's similarity blended
    with BM25 over the training passages."""
    from .warm_start import blended_teacher_scores

    return blended_teacher_scores(
        records,
        engine.model,
        corpus=engine.training_passages(),
        max_length=engine.max_length,
        precision=engine.precision,
    )


def steps_batch_size(engine: Any, loss: Any) -> int:
    """Items per step: LlamaIndex's ``batch_size`` counts samples, so grouped training of
    LlamaIndex samples takes ``batch_size / (1 + num_negatives)`` groups per step."""
    from .recipe import is_grouped

    if not (engine.llama_index_input and is_grouped(loss)):
        return engine.batch_size
    groups = max(1, round(engine.batch_size / (1 + engine.num_negatives)))
    logger.info(
        "batch_size=%d counts samples (LlamaIndex's meaning): %d group(s) of 1 positive + "
        "%d negatives per step.",
        engine.batch_size,
        groups,
        engine.num_negatives,
    )
    return groups
