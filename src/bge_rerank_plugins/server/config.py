"""``ServerConfig``: the rerank server's settings, checked before anything starts.

The scorer's options keep their flat keywords (``ServerConfig(model=..., dtype=...)``, as the
CLI, the docs and existing code write them) and are checked by
:class:`~bge_rerank_plugins.config.ScorerConfig`, which :attr:`ServerConfig.scorer` returns: the
messages are the same as anywhere else a scorer option is given. The server's own settings
(batching, limits, auth, timeouts) are checked here.

>>> config = ServerConfig(model="BAAI/bge-reranker-base", dtype="bfloat16", max_documents=100)
>>> config.scorer.dtype, config.scorer.normalize
('bfloat16', False)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import DEFAULT_MODEL, ScorerConfig

if TYPE_CHECKING:
    from ..scorer import CrossEncoderScorer

__all__ = ["API_KEY_ENV", "SCORER_FIELDS", "ServerConfig"]

#: Environment variable read for the bearer API key when none is given.
API_KEY_ENV = "BGE_RERANK_API_KEY"

#: The :class:`ServerConfig` fields that are :class:`~bge_rerank_plugins.config.ScorerConfig`
#: fields (passed to it unchanged).
SCORER_FIELDS: tuple[str, ...] = (
    "model",
    "device",
    "dtype",
    "max_length",
    "batch_size",
    "token_budget",
    "backend",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class ServerConfig:
    """Settings of the rerank server; every value is checked here, before anything starts.

    Args:
        model: Hub id or local directory of the cross-encoder.
        device, dtype, max_length, batch_size, token_budget, backend: passed to
            :class:`~bge_rerank_plugins.CrossEncoderScorer` through :attr:`scorer`
            (``batch_size`` is the most pairs per forward pass; ``backend="torch-int8"`` served
            1.6x the pairs/s of float32 on a CPU with VNNI, with approximate scores:
            docs/benchmarks.md). The device must exist on this machine.
        max_batch_pairs: most pairs the batcher merges from concurrent requests into one scorer
            call (the scorer then length-sorts them and cuts them into forward passes).
        max_batch_wait_ms: longest the batcher waits for more requests after the first one.
        batch_wait_fraction: the batcher waits this fraction (in (0, 1]) of the recent model
            time per batch, capped at ``max_batch_wait_ms`` (so a slow CPU batch waits long enough
            to merge the next wave of requests and a fast GPU batch barely waits); ``None``:
            always wait ``max_batch_wait_ms``.
        batching: ``False`` scores each request on its own (baseline for benchmarks).
        max_documents: most documents (texts) in one request; more -> 413.
        max_text_chars: most characters in the query or any one document; more -> 413.
        max_request_bytes: largest request body accepted, counted as it arrives (so a chunked
            body without ``Content-Length`` is cut off too); larger -> 413.
        api_key: when set, the rerank endpoints and ``/info`` require
            ``Authorization: Bearer <api_key>``. ``None`` reads ``BGE_RERANK_API_KEY``; unset
            means no auth. An empty key (``""``, or the variable set to ``""``) is a
            :class:`ValueError`, not "auth off": unset the variable to serve without a key.
        served_model_name: the model name reported in ``/info`` (default: ``model``).
        torch_threads: CPU threads torch uses for the model (``torch.set_num_threads``; process
            wide). ``None`` keeps torch's default (one per core). On a busy or shared CPU, fewer
            threads than cores often score faster and leave a core for the HTTP side.
        drain_timeout_s: how long shutdown waits for queued requests to be scored.
        request_header_timeout_s: a connection that has not sent complete request headers
            this many seconds after it opened (or after its previous response) is closed.
            Applied by :func:`~bge_rerank_plugins.server.run_server`; ``None``: no bound.
        request_body_timeout_s: the whole request body must arrive within this many seconds
            of the request headers; slower -> 408 and the connection is closed. ``None``: no
            bound.
        score_timeout_s: the per-request scoring deadline: a request whose scores are not
            ready this many seconds after it reached the batcher (queue wait included) is
            answered 503 with ``Retry-After`` and ``"error_type": "deadline_exceeded"``, counted
            in ``bge_rerank_deadline_fallbacks_total``; if it was still queued, it is never
            scored. ``None`` (default): no deadline. The client keeps its first-stage order
            (``RemoteScorer.rank(timeout=...)``, an adapter's ``timeout=``).

    Raises:
        TypeError, ValueError: a setting of the wrong type or out of range, naming it.
    """

    #: ScorerConfig fields the server does not take, each for a reason:
    #: ``normalize``: the server asks for raw logits and applies the sigmoid per request (TEI's
    #: ``raw_scores``); ``template``: requests carry texts (TEI) or documents rendered by
    #: ``rank_fields`` (Cohere), not records; ``query_max_length``, ``cache_size``,
    #: ``revision``, ``trust_remote_code``, ``family`` (detected from the model's files),
    #: ``instruction``, ``cutoff_layer``: not served options yet (no ``serve`` flags); serve
    #: such a scorer with ``create_app(config, scorer_factory=...)``.
    SCORER_CONFIG_EXCLUDED: ClassVar[tuple[str, ...]] = (
        "normalize",
        "template",
        "query_max_length",
        "cache_size",
        "revision",
        "trust_remote_code",
        "family",
        "instruction",
        "cutoff_layer",
    )

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str = "auto"
    max_length: int | str | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    backend: str = "torch"
    max_batch_pairs: int = 512
    max_batch_wait_ms: float = 100.0
    batch_wait_fraction: float | None = 0.1
    batching: bool = True
    max_documents: int = 1000
    max_text_chars: int = 20_000
    max_request_bytes: int = 32 * 1024 * 1024
    api_key: str | None = None
    served_model_name: str | None = None
    torch_threads: int | None = None
    drain_timeout_s: float = 30.0
    request_header_timeout_s: float | None = 10.0
    request_body_timeout_s: float | None = 30.0
    score_timeout_s: float | None = None

    def __post_init__(self) -> None:
        scorer = self.scorer  # every scorer option, checked (and normalised) by ScorerConfig
        self.model, self.device, self.dtype = scorer.model, scorer.device, scorer.dtype
        if not self.model.strip():
            raise TypeError(
                f"model must be a Hub id or a model directory (a non-empty string), got "
                f"{self.model!r}"
            )
        if self.device is not None:
            # The server runs where it is configured: a device this machine lacks fails now.
            from ..runtime.device import resolve_device

            resolve_device(self.device)
        for name in ("max_batch_pairs", "max_documents", "max_text_chars", "max_request_bytes"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.torch_threads is not None and not _is_positive_int(self.torch_threads):
            raise ValueError(
                f"torch_threads must be a positive int or None, got {self.torch_threads!r}"
            )
        if not _is_number(self.max_batch_wait_ms) or not 0 <= self.max_batch_wait_ms < math.inf:
            raise ValueError(
                f"max_batch_wait_ms must be a number >= 0, got {self.max_batch_wait_ms!r}"
            )
        fraction = self.batch_wait_fraction
        if fraction is not None and (not _is_number(fraction) or not 0 < fraction <= 1):
            raise ValueError(
                f"batch_wait_fraction must be in (0, 1] or None (always wait "
                f"max_batch_wait_ms), got {fraction!r}"
            )
        if not isinstance(self.batching, bool):
            raise TypeError(f"batching must be True or False, got {self.batching!r}")
        if not _is_number(self.drain_timeout_s) or not 0 <= self.drain_timeout_s < math.inf:
            raise ValueError(f"drain_timeout_s must be a number >= 0, got {self.drain_timeout_s!r}")
        for name in ("request_header_timeout_s", "request_body_timeout_s", "score_timeout_s"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 < value < math.inf):
                raise ValueError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
        if self.served_model_name is not None and not isinstance(self.served_model_name, str):
            raise TypeError(
                f"served_model_name must be a string or None, got {self.served_model_name!r}"
            )
        self._resolve_api_key()

    @classmethod
    def from_scorer_config(cls, scorer: ScorerConfig, **options: Any) -> ServerConfig:
        """A server for ``scorer``'s model and options; ``options`` are the server's own
        settings (``api_key=``, ``max_documents=``, ...).

        Raises:
            ValueError: ``scorer`` sets an option the server does not take (see
                :attr:`SCORER_CONFIG_EXCLUDED`; ``normalize`` is ignored: the server applies
                the sigmoid per request), or ``options`` repeats a scorer option.
        """
        if not isinstance(scorer, ScorerConfig):
            raise TypeError(f"scorer must be a ScorerConfig, got {type(scorer).__name__}")
        default = ScorerConfig(model=scorer.model)
        unserved = [
            name
            for name in cls.SCORER_CONFIG_EXCLUDED
            if name != "normalize" and getattr(scorer, name) != getattr(default, name)
        ]
        if unserved:
            raise ValueError(
                f"The server does not take the scorer options {unserved}; leave them at their "
                "defaults, or serve such a scorer with create_app(config, scorer_factory=...)."
            )
        repeated = sorted(set(options) & set(SCORER_FIELDS))
        if repeated:
            raise ValueError(
                f"{repeated} are scorer options: set them in the ScorerConfig, not twice."
            )
        return cls(**{name: getattr(scorer, name) for name in SCORER_FIELDS}, **options)

    @property
    def scorer(self) -> ScorerConfig:
        """The scorer's options as a :class:`~bge_rerank_plugins.config.ScorerConfig` (raw
        logits: the server applies the sigmoid per request)."""
        options = {name: getattr(self, name) for name in SCORER_FIELDS}
        return ScorerConfig(**options, normalize=False)

    def _resolve_api_key(self) -> None:
        source = "api_key"
        key = self.api_key
        if key is None and API_KEY_ENV in os.environ:
            key, source = os.environ[API_KEY_ENV], API_KEY_ENV
        if key is None:
            self._api_key_source: str | None = None
            return
        if not isinstance(key, str):
            raise TypeError(f"api_key must be a string or None, got {type(key).__name__}")
        where = f"{API_KEY_ENV} is set but" if source == API_KEY_ENV else "api_key (--api-key) is"
        if not key.strip():
            raise ValueError(
                f"{where} empty. An empty key would leave the endpoints open: set a real key, "
                f"or, to serve without auth, pass no key and unset {API_KEY_ENV}."
            )
        if key != key.strip():
            raise ValueError(
                f"{where} a key with leading or trailing whitespace, which no client can send "
                "in an Authorization header; strip it."
            )
        self.api_key = key
        self._api_key_source = source

    @property
    def auth_enabled(self) -> bool:
        """Whether the rerank endpoints and ``/info`` need the API key."""
        return bool(self.api_key)

    @property
    def api_key_source(self) -> str | None:
        """Where the key came from: ``"api_key"``, :data:`API_KEY_ENV`, or ``None`` (no key)."""
        return self._api_key_source

    def build_scorer(self) -> CrossEncoderScorer:
        """Load the model as configured (raw logits; the server applies the sigmoid per call)."""
        from ..scorer import CrossEncoderScorer

        return CrossEncoderScorer.from_config(self.scorer)

    def public(self) -> dict[str, Any]:
        """The settings without the API key (``"set"`` or ``None`` in its place)."""
        out = asdict(self)
        out["api_key"] = "set" if self.api_key else None
        return out
