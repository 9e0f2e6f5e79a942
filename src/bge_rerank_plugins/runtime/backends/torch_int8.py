"""``torch-int8`` backend: the encoder's ``Linear`` layers run as int8 matrix products (CPU only).

Weights are stored as int8 with one scale per output channel, and every token's activation row
gets its own scale (symmetric int8, quantized on the fly); the products run in
``torch._int_mm``. One outlier token then costs precision in its own row only, instead of in the
whole batch: on a fine-tuned MiniLM (150 SciFact dev queries x 20 candidates), per-query
Spearman against float32 rose from 0.805 (min) / 0.955 (mean) with one activation scale per
batch to 0.964-0.971 / 0.994 (docs/benchmarks.md). The attention's query, key and value layers
share one product (:class:`SharedInt8Projection`): their input is quantized once.

How wide the weights may be depends on the CPU's int8 kernel, which :func:`int_mm_weight_limit`
measures once per process (an exact product of worst-case operands, not a guess from the CPU's
name):

- With an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI, AMX-INT8; and ARM), products
  accumulate in 32 bits and weights use the full range, -127 to 127.
- On x86 CPUs without one (AVX2 or AVX-512 only), oneDNN's kernel multiplies pairs of
  (activation + 128, weight) bytes into *16-bit* sums, which saturate beyond 32,767: with full
  range weights the products come out wrong. Weights are then quantized to -64..64, where
  ``255 * 64 * 2 = 32,640`` always fits, and the products are exact again; activations keep
  their full 8 bits and per-token scales.
- Where ``torch._int_mm`` has no CPU kernel (older torch) or is wrong even so,
  ``torch.ao.quantization.quantize_dynamic`` (one activation scale per batch, 7-bit
  activations), whose x86 kernels are safe from saturation on any CPU.

Embeddings, LayerNorm, attention and the classification head stay float32. PyTorch's int8
kernels exist only for CPUs, so a scorer on a GPU runs this backend on the CPU (with a logged
notice) rather than failing.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..device import release_freed_memory

if TYPE_CHECKING:
    from ..loading import LoadedModel

__all__ = [
    "Int8Linear",
    "Int8ProjectionSlice",
    "SharedInt8Projection",
    "TorchInt8Runner",
    "int_mm_weight_limit",
    "quantize_linear_int8",
]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_INT8_MAX = 127
# Largest |weight| whose pair sums (activation byte + 128 <= 255) fit in 16 bits: 255 * 64 * 2.
_SAFE_WEIGHT_MAX = 64
_TINY = 1e-12  # floor for a scale, so an all-zero row or weight channel divides safely


class Int8Linear(torch.nn.Module):
    """A ``Linear`` layer computed as an int8 x int8 product with per-token activation scales.

    ``weight_max`` is the largest quantized weight: 127 (full int8) or 64 (what x86 CPUs without
    VNNI multiply exactly); ``None`` takes :func:`int_mm_weight_limit`'s answer for this CPU.

    >>> layer = torch.nn.Linear(8, 4)
    >>> x = torch.randn(2, 3, 8)
    >>> torch.allclose(Int8Linear(layer)(x), layer(x), atol=0.05)
    True
    """

    def __init__(
        self,
        linear: torch.nn.Linear | Sequence[torch.nn.Linear],
        weight_max: int | None = None,
    ) -> None:
        super().__init__()
        if weight_max is None:
            weight_max = int_mm_weight_limit() or _INT8_MAX
        if not 1 <= weight_max <= _INT8_MAX:
            raise ValueError(f"weight_max must be between 1 and 127, got {weight_max!r}")
        self.weight_max = weight_max
        # Several layers are stacked along the output dimension into one product (see
        # Int8ProjectionSlice): integer sums are exact, so each keeps exactly its own outputs.
        linears = [linear] if isinstance(linear, torch.nn.Linear) else list(linear)
        weight = torch.cat([m.weight.detach().to("cpu", torch.float32) for m in linears])
        scale = weight.abs().amax(dim=1).clamp(min=_TINY) / weight_max
        quantized = torch.round(weight / scale[:, None]).clamp(-weight_max, weight_max)
        self.in_features = linears[0].in_features
        self.out_features = weight.shape[0]
        # (in, out) view of the row-major (out, in) int8 weight: the layout _int_mm reads fastest
        self.register_buffer("weight_int8", quantized.to(torch.int8).t(), persistent=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        bias = None
        if any(m.bias is not None for m in linears):
            bias = torch.cat(
                [
                    torch.zeros(m.out_features) if m.bias is None else m.bias.detach().float()
                    for m in linears
                ]
            ).to("cpu")
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        # max |x| per row as max(max, -min): two reductions without an |x|-sized buffer.
        # Every later step works in place: on the CPU a fresh activation-sized buffer costs
        # more than the arithmetic on it.
        row_scale = torch.maximum(
            rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_()
        )
        row_scale.clamp_(min=_TINY).div_(_INT8_MAX)
        quantized = torch.div(rows, row_scale).round_().to(torch.int8)
        products = torch._int_mm(quantized, self.weight_int8)
        # Converted to float32 in the int32 buffer itself (same element size, element by
        # element), which saves allocating an output-sized tensor: 10-15% of the layer's time.
        out = products.view(torch.float32)
        out.copy_(products)
        out.mul_(row_scale)
        if self.bias is None:
            out.mul_(self.weight_scale)
        else:
            torch.addcmul(self.bias, out, self.weight_scale, out=out)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight_max={self.weight_max}"
        )


class SharedInt8Projection(torch.nn.Module):
    """Projections of one input (attention's query, key and value) as a single int8 product.

    The input is quantized once instead of once per projection, and one wide product runs
    faster than three narrow ones. Each :class:`Int8ProjectionSlice` asks for the product of
    the tensor it was given; the first asks computes it, the others reuse it if they were
    given the very same tensor (and recompute otherwise, so results never depend on the
    order of calls). Per thread, and dropped once every slice has read it. A caller that
    gives the slices different tensors (the first-token last layer of
    :mod:`bge_rerank_plugins.first_token`: keys and values of every token, the query of the
    first) leaves its last product, the first tokens' (batch x 1 row), until the thread's next call.
    """

    def __init__(self, linears: Sequence[torch.nn.Linear], weight_max: int | None = None) -> None:
        super().__init__()
        self.product = Int8Linear(linears, weight_max)
        self.readers = len(linears)
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor, set[int]]] = {}

    def output_for(self, x: torch.Tensor, reader: int) -> torch.Tensor:
        thread = threading.get_ident()
        pending = self._pending.get(thread)
        if pending is None or pending[0] is not x or reader in pending[2]:
            pending = (x, self.product(x), set())
        pending[2].add(reader)
        if len(pending[2]) == self.readers:
            self._pending.pop(thread, None)
        else:
            self._pending[thread] = pending
        return pending[1]


class Int8ProjectionSlice(torch.nn.Module):
    """One projection's columns of a :class:`SharedInt8Projection` (what ``Linear`` returned)."""

    def __init__(self, shared: SharedInt8Projection, reader: int, start: int, stop: int) -> None:
        super().__init__()
        self.shared = shared
        self.reader, self.start, self.stop = reader, start, stop
        self.in_features, self.out_features = shared.product.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output_for(x, self.reader)[..., self.start : self.stop]

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of the shared product"


def quantize_linear_int8(
    model: Any, *, per_token: bool | None = None, weight_max: int | None = None
) -> Any:
    """An int8 copy of a ``transformers`` model whose encoder ``Linear`` layers run in int8 (CPU).

    ``per_token=None`` picks per-token :class:`Int8Linear` layers wherever ``torch._int_mm``
    multiplies exactly (:func:`int_mm_weight_limit`; weights -127..127 with VNNI or AMX,
    -64..64 on x86 without) and ``quantize_dynamic`` elsewhere (see the module docstring);
    True or False forces one. ``weight_max`` overrides the weight range of the per-token
    layers (for tests and measurements). The classification head stays float32. ``model`` is
    left as it is; the copy shares its embeddings and other float32 tensors instead of
    duplicating them.

    >>> from torch import nn
    >>> class Tiny(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder, self.head = nn.Linear(4, 4), nn.Linear(4, 1)
    >>> quantized = quantize_linear_int8(Tiny(), per_token=True)
    >>> type(quantized.encoder).__name__, type(quantized.head).__name__
    ('Int8Linear', 'Linear')
    """
    limit = int_mm_weight_limit()
    if per_token is None:
        per_token = limit is not None
    if weight_max is None:
        weight_max = limit or _INT8_MAX
    if _on_cpu_in_float32(model):
        # Copy the module tree but share every tensor with ``model``: swapping the copy's
        # Linear layers for int8 ones then leaves the embeddings shared instead of duplicated
        # (a second float32 copy of XLM-R's 250k-token embeddings is 0.8 GB).
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        copied = copy.deepcopy(model, memo=shared).eval()
    else:  # a GPU or half-precision model: a float32 CPU copy of its own, the original untouched
        copied = copy.deepcopy(model).to("cpu").float().eval()
    body = _body(copied)
    if per_token:
        inside = {id(m) for m in body.modules()}
        for parent in list(copied.modules()):
            _share_projections(parent, inside, weight_max)
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear and id(child) in inside:
                    setattr(parent, name, Int8Linear(child, weight_max))
        return copied
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in engines or torch.backends.quantized.engine == "none":
        for engine in ("x86", "fbgemm", "qnnpack", "onednn"):
            if engine in engines:
                torch.backends.quantized.engine = engine
                break
    quantize_dynamic(
        body, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )
    return copied


# Sibling layers that attention implementations call on one and the same input tensor.
_PROJECTION_GROUPS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def _share_projections(
    parent: torch.nn.Module, inside: set[int], weight_max: int | None = None
) -> None:
    """Replace ``parent``'s query/key/value ``Linear`` layers by slices of one int8 product
    (only layers whose ids are in ``inside``, the part being quantized)."""
    for names in _PROJECTION_GROUPS:
        layers = [getattr(parent, name, None) for name in names]
        if not all(type(m) is torch.nn.Linear and id(m) in inside for m in layers):
            continue
        if len({m.in_features for m in layers}) != 1:
            continue
        shared = SharedInt8Projection(layers, weight_max)
        start = 0
        for reader, (name, layer) in enumerate(zip(names, layers)):
            stop = start + layer.out_features
            setattr(parent, name, Int8ProjectionSlice(shared, reader, start, stop))
            start = stop


@functools.lru_cache(maxsize=1)
def int_mm_weight_limit() -> int | None:
    """The widest int8 weights that ``torch._int_mm`` multiplies exactly on this CPU.

    127 where products accumulate in 32 bits (AVX512-VNNI, AVX-VNNI, AMX, ARM), 64 on x86 CPUs
    without an int8 dot-product instruction (oneDNN adds 128 to every activation byte and sums
    pairs of byte products in 16 bits, which saturate once ``255 * |w| * 2`` exceeds 32,767),
    and ``None`` where there is no CPU kernel at all (``torch._int_mm`` is private, and older
    releases have none) or neither range is exact: ``quantize_linear_int8`` then takes
    ``quantize_dynamic``. Measured once per process on worst-case operands (activations at
    +-127 against weights at +-limit, and random ones), so it follows the kernel oneDNN really
    dispatches to, including one capped by ``ONEDNN_MAX_CPU_ISA``.
    """
    for limit in (_INT8_MAX, _SAFE_WEIGHT_MAX):
        if _int_mm_exact(limit):
            if limit != _INT8_MAX:
                logger.info(
                    "torch._int_mm saturates full-range int8 weights on this CPU (no VNNI or "
                    "AMX); torch-int8 quantizes weights to -%d..%d.",
                    limit,
                    limit,
                )
            return limit
    logger.info("torch._int_mm is not exact on this CPU; torch-int8 uses quantize_dynamic.")
    return None


def _int_mm_exact(limit: int) -> bool:
    """Whether ``torch._int_mm`` gives the exact product for activations in -127..127 and
    weights in ``-limit..limit``, at a few shapes (a single row takes its own code path)."""
    generator = torch.Generator().manual_seed(0)
    try:
        for rows, inner, cols in ((17, 64, 24), (1, 72, 16), (40, 256, 32)):
            a = torch.randint(-_INT8_MAX, _INT8_MAX + 1, (rows, inner), generator=generator)
            b = torch.randint(-limit, limit + 1, (inner, cols), generator=generator)
            a[0], b[:, 0] = _INT8_MAX, limit  # the largest pair sums, both signs
            if rows > 1:
                a[1], b[:, 1] = -_INT8_MAX, -limit
            exact = a @ b  # int64
            got = torch._int_mm(a.to(torch.int8), b.to(torch.int8))
            if not torch.equal(got.long(), exact):
                return False
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def _body(model: Any) -> Any:
    """The part of ``model`` to quantize: its encoder, without the classification head.

    The head reads one token per pair, so int8 would save nothing there and cost precision
    in the very number the scorer returns.
    """
    base = getattr(model, "base_model", model)
    if base is model:
        return getattr(model, "encoder", model)
    return base


def _on_cpu_in_float32(model: Any) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in model.parameters())


class TorchInt8Runner:
    """Runs batches through an int8 copy of the scorer's model; one copy per loaded model."""

    def __init__(self, loaded: LoadedModel) -> None:
        if not str(loaded.device).startswith("cpu"):
            logger.warning(
                "backend='torch-int8' has CPU kernels only; the %s model runs on the CPU "
                "(use backend='torch' with dtype='float16' for speed on %s).",
                loaded.name,
                loaded.device,
            )
        # The int8 copy shares the float32 network's embeddings and head; its other float32
        # weights are freed with it unless the scorer's own torch model is that network.
        self.model = quantize_linear_int8(loaded.cpu_float32_network())
        release_freed_memory()
        limit = int_mm_weight_limit()
        logger.info(
            "torch-int8 for %s: %s.",
            loaded.name,
            "quantize_dynamic (one activation scale per batch)"
            if limit is None
            else f"per-token int8 activations, int8 weights within -{limit}..{limit}",
        )

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> TorchInt8Runner:
        """The runner for ``loaded``, quantized once per process."""
        with _lock:
            if "torch-int8" not in loaded.runners:
                loaded.runners["torch-int8"] = cls(loaded)
            return loaded.runners["torch-int8"]

    def __call__(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            cpu = {k: v.to("cpu") for k, v in tensors.items()}
            return self.model(**cpu, return_dict=True).logits.float()
