"""``onnx`` and ``onnx-int8`` backends: the model exported once, run by ONNX Runtime.

The export (``torch.onnx.export``, TorchScript exporter, dynamic batch and sequence axes) and the
dynamically quantized int8 copy (``onnxruntime.quantization.quantize_dynamic``) are written to an
``onnx/`` folder inside the model directory, or under ``~/.cache/bge_rerank_plugins/onnx/<hash>``
when the model directory is not writable (a Hub cache, a read-only mount). A ``fingerprint.json``
next to them identifies the weight files (:mod:`.onnx_files`): when the weights change, the files
are exported again. It also records the quantization settings of every int8 file, whose name
carries them too (``model.int8.onnx``, ``model.int8.reduce_range.onnx``), so a graph quantized
for another CPU is never reused here (see :func:`int8_options`). Each graph keeps its weights in
a ``.data`` file beside it (ONNX external data), which ONNX Runtime reads without a second
in-memory copy of the whole model.

>>> from bge_rerank_plugins import CrossEncoderScorer
>>> scorer = CrossEncoderScorer("BAAI/bge-reranker-v2-m3", backend="onnx-int8")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...tokenization import example_batch
from ..device import release_freed_memory
from .onnx_files import fingerprint, onnx_cache_dir, write_stamp

if TYPE_CHECKING:
    import torch

    from ..loading import LoadedModel

__all__ = [
    "OnnxRunner",
    "export_onnx",
    "int8_options",
    "onnx_cache_dir",
    "quantize_onnx_int8",
    "u8s8_saturates",
]

logger = logging.getLogger(__name__)

_FP32_NAME = "model.onnx"
_INT8_PREFIX = "model.int8"
# Per-channel weight scales keep rankings much closer to float32 than one scale per tensor
# (measured on a fine-tuned MiniLM: per-query Spearman min 0.94 vs 0.79 on SciFact dev).
_PER_CHANNEL = True

_lock = threading.Lock()


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "backend='onnx' / 'onnx-int8' needs ONNX Runtime: "
            "pip install 'bge-rerank-plugins[onnx]' (onnxruntime and onnx)."
        ) from error
    return onnxruntime


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """Whether ONNX Runtime's uint8 x int8 products saturate on this CPU.

    On x86 CPUs without an int8 dot-product instruction (VNNI, AMX), ONNX Runtime's U8S8 kernels
    sum pairs of byte products into 16-bit integers (``vpmaddubsw``), which saturate when an
    activation byte near 255 meets a weight beyond 64: a MiniLM scored that way lost its ranking
    (Spearman 0.54 against float32 on the test corpus). Measured once per process by running a
    small ``MatMulInteger`` with worst-case operands (constant weights, prepacked like the real
    graph's) and comparing it with the exact product; ``True`` also when that check cannot run
    (the safe choice).
    """
    ort = _require_onnxruntime()
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inner, cols = 64, 24
    weights = rng.integers(-127, 128, size=(inner, cols)).astype(np.int8)
    weights[:, 0], weights[:, 1] = 127, -127
    rows = rng.integers(0, 256, size=(17, inner)).astype(np.uint8)
    rows[0], rows[1] = 255, 0
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, inner])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, cols])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        exact = rows.astype(np.int64) @ weights.astype(np.int64)
        for batch in (rows, rows[:1]):
            (got,) = session.run(["y"], {"a": batch})
            if not np.array_equal(got.astype(np.int64), exact[: len(batch)]):
                return True
    except Exception as error:  # any failure: take the range that is safe on every CPU
        logger.info("ONNX Runtime int8 probe failed (%s); quantizing with reduce_range.", error)
        return True
    return False


def int8_options() -> dict[str, bool]:
    """The ``quantize_dynamic`` settings for this CPU.

    ``reduce_range=True`` (weights within -64..64 instead of -127..127, so that no pair of byte
    products can leave 16 bits: ``255 * 64 * 2 = 32,640``) where :func:`u8s8_saturates`, else
    full-range weights, which are more precise. The int8 file's name and the fingerprint both
    carry these settings.
    """
    return {"per_channel": _PER_CHANNEL, "reduce_range": u8s8_saturates()}


def _int8_name(options: dict[str, bool]) -> str:
    tags = "".join(f".{key}" for key in ("reduce_range",) if options.get(key))
    if options.get("per_channel") is not True:
        tags += ".per_tensor"
    return f"{_INT8_PREFIX}{tags}.onnx"


def _input_names(tokenizer: Any) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


def export_onnx(loaded: LoadedModel, path: str | os.PathLike[str]) -> Path:
    """Export the float32 model of ``loaded`` to ONNX at ``path`` (dynamic batch and length).

    The example batch holds two pairs of different lengths, so the traced graph keeps the
    attention mask (a batch without padding could let a mask shortcut be traced away).
    """
    import torch

    model = loaded.cpu_float32_network()
    names = _input_names(loaded.tokenizer)
    with loaded.lock:  # the tokenizer's padding state is shared with scorers on this model
        example = example_batch(loaded.tokenizer)
    args = tuple(example[name] for name in names)

    class _Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs)), return_dict=True).logits

    path = Path(path)
    # The wrapper must be in eval mode too: the exporter restores the wrapper's mode afterwards,
    # and a wrapper left in training mode would switch dropout on in the shared model.
    wrapper = _Logits(model).eval()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as work:
        traced = Path(work) / "traced.onnx"
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # Tracer notes about shape checks turned constant; the dynamic axes cover them.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper,
                    args,
                    str(traced),
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes={
                        **{n: {0: "batch", 1: "sequence"} for n in names},
                        "logits": {0: "batch"},
                    },
                    opset_version=17,
                    dynamo=False,
                    do_constant_folding=True,
                )
        finally:
            model.eval()
        import onnx

        staged = Path(work) / path.name
        onnx.save_model(
            onnx.load(str(traced)),
            str(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=_data_name(path),
        )
        _move_into_place(staged, path)
    return path


def _data_name(graph: Path) -> str:
    return graph.name + ".data"


def _move_into_place(staged: Path, graph: Path) -> None:
    """Move a graph and its ``.data`` file from a work folder next to ``graph``: the data first,
    the graph last, so a graph file is only ever there with complete weights beside it."""
    data = staged.with_name(_data_name(staged))
    if data.exists():
        # onnx writes the data file owner-only; give it the graph's permissions, so whoever can
        # read the cached graph can read its weights too.
        data.chmod(staged.stat().st_mode & 0o777)
        data.replace(graph.with_name(_data_name(graph)))
    staged.replace(graph)


def _remove(graph: Path) -> None:
    graph.unlink(missing_ok=True)
    graph.with_name(_data_name(graph)).unlink(missing_ok=True)


def quantize_onnx_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    *,
    reduce_range: bool | None = None,
) -> Path:
    """Dynamic int8 quantization of an ONNX model.

    Weights of MatMul/Gemm nodes become int8 with one scale per output channel; activations are
    quantized to uint8 per batch at run time. ``reduce_range`` keeps the weights within -64..64;
    ``None`` decides for this CPU (:func:`int8_options`).
    """
    _require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = int8_options()
    if reduce_range is not None:
        options["reduce_range"] = bool(reduce_range)
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".quantize-") as work:
        staged = Path(work) / int8_path.name
        quantize_dynamic(
            str(fp32_path),
            str(staged),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=True,
            **options,
        )
        _move_into_place(staged, int8_path)
    return int8_path


def _prepare(loaded: LoadedModel, quantize: bool) -> Path:
    folder = onnx_cache_dir(loaded.source)
    stamp_file = folder / "fingerprint.json"
    stamp = fingerprint(loaded.source)
    fp32 = folder / _FP32_NAME
    try:
        saved = json.loads(stamp_file.read_text(encoding="utf-8"))
        quantized = saved.pop("int8", {})
        current = saved == stamp and isinstance(quantized, dict)
    except (OSError, ValueError, AttributeError):
        current = False
    if not current or not fp32.exists():
        logger.info("Exporting %s to ONNX in %s (once; reused afterwards).", loaded.name, folder)
        _remove(fp32)
        for old in folder.glob(f"{_INT8_PREFIX}*.onnx"):
            _remove(old)
        export_onnx(loaded, fp32)
        release_freed_memory()  # the float32 network loaded for the export
        quantized = {}
        write_stamp(stamp_file, stamp, quantized)
    if not quantize:
        return fp32
    options = int8_options()
    int8 = folder / _int8_name(options)
    # Reused only when the fingerprint says it was quantized with exactly these settings.
    if not int8.exists() or quantized.get(int8.name) != options:
        logger.info(
            "Quantizing %s to int8 (%s; once, reused afterwards).",
            loaded.name,
            ", ".join(f"{key}={value}" for key, value in options.items()),
        )
        _remove(int8)
        quantize_onnx_int8(fp32, int8, reduce_range=options["reduce_range"])
        quantized[int8.name] = options
        write_stamp(stamp_file, stamp, quantized)
    return int8


class OnnxRunner:
    """Runs padded batches through an ONNX Runtime session; one session per model and variant."""

    def __init__(self, loaded: LoadedModel, quantize: bool) -> None:
        import torch

        ort = _require_onnxruntime()
        self.path = _prepare(loaded, quantize)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Memory patterns are planned per input shape, and every batch here has its own length:
        # off, the int8 session peaked about 300 MB lower on the benchmark's 400 pairs, at the
        # same speed (docs/benchmarks.md).
        options.enable_mem_pattern = False
        providers = ["CPUExecutionProvider"]
        if str(loaded.device).startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers() and not quantize:
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning(
                    "ONNX Runtime has no usable CUDA provider for backend=%r here; running on "
                    "the CPU.",
                    "onnx-int8" if quantize else "onnx",
                )
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.quantize = quantize

    @classmethod
    def for_model(cls, loaded: LoadedModel, quantize: bool) -> OnnxRunner:
        """The runner for ``loaded`` (exported and, for int8, quantized on first use)."""
        with _lock:
            key = "onnx-int8" if quantize else "onnx"
            if key not in loaded.runners:
                loaded.runners[key] = cls(loaded, quantize)
            return loaded.runners[key]

    def __call__(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        feed = {name: tensors[name].to("cpu").numpy() for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return torch.from_numpy(logits).float()
