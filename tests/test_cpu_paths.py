"""Every CPU-dependent choice, on the path the *other* kind of CPU takes.

The int8 kernels, ``torch._int_mm``'s weight range, ONNX Runtime's quantization settings and
bf16 autocast are decided per CPU. CI runs on one kind of machine, so each choice is forced
here both ways: by the project's probes patched, by an exact emulation of the saturating
arithmetic of x86 CPUs without VNNI, and (for torch) by capping the instruction sets of torch's
kernel libraries in a subprocess (``ONEDNN_MAX_CPU_ISA=AVX2`` and friends), which runs oneDNN's
real AVX2 kernels on any newer x86 CPU.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bge_rerank_plugins import CrossEncoderScorer

QUERY = "what is the capital of China?"

# /proc/cpuinfo flags of the two kinds of machine (abridged to what the probes read).
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # e.g. AMD EPYC 7002/7003
AVX512_VNNI_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}

# What torch's kernel libraries may use, capped at AVX2: oneDNN (torch._int_mm, bf16 matmul),
# ATen's own vectorized kernels, FBGEMM (quantize_dynamic) and MKL (float32 matmul).
AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def _x86_with_avx2() -> bool:
    from bge_rerank_plugins.runtime.device import _cpu_flags

    return platform.machine().lower() in ("x86_64", "amd64") and "avx2" in _cpu_flags()


needs_avx2 = pytest.mark.skipif(
    not _x86_with_avx2(), reason="capping oneDNN at AVX2 needs an x86 CPU with AVX2"
)


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def saturating_int_mm(a, b):
    """``torch._int_mm`` as x86 CPUs without VNNI compute it (oneDNN's AVX2 / AVX-512 kernels).

    Each activation byte is made unsigned (+128), pairs of ``u8 x s8`` products are summed into
    a saturating 16-bit integer (``vpmaddubsw``), the pair sums are added in 32 bits, and the
    +128 is taken back out with the weights' column sums.
    """
    import torch

    unsigned = a.to(torch.int32) + 128
    weights = b.to(torch.int32)
    if unsigned.shape[1] % 2:
        unsigned = torch.nn.functional.pad(unsigned, (0, 1))
        weights = torch.nn.functional.pad(weights, (0, 0, 0, 1))
    pairs = (
        unsigned[:, 0::2, None] * weights[None, 0::2, :]
        + unsigned[:, 1::2, None] * weights[None, 1::2, :]
    )
    summed = pairs.clamp(-32768, 32767).sum(dim=1)
    return (summed - 128 * weights.sum(dim=0)).to(torch.int32)


@pytest.fixture
def fresh_probes():
    """Clear the per-process probe answers before and after a test that changes what they see."""
    from bge_rerank_plugins.runtime.backends import onnx as onnx_backend
    from bge_rerank_plugins.runtime.backends import torch_int8

    # the real probes, held here: a test may have patched the module attributes by teardown
    probes = (torch_int8.int_mm_weight_limit, onnx_backend.u8s8_saturates)

    def clear():
        for probe in probes:
            probe.cache_clear()

    clear()
    yield
    clear()


# ----------------------------------------------------------------------------- the flag probes
@pytest.mark.parametrize(
    ("flags", "bf16", "int8_dot"),
    [(AVX2_ONLY, False, False), (AVX512_VNNI_BF16, True, True), (frozenset(), False, False)],
    ids=["avx2-only", "avx512-vnni-bf16", "no-cpuinfo"],
)
def test_cpu_flag_probes_and_the_bf16_autocast_choice(monkeypatch, flags, bf16, int8_dot):
    from bge_rerank_plugins import loading
    from bge_rerank_plugins.finetune.recipe import cpu_bf16_autocast
    from bge_rerank_plugins.runtime import device

    monkeypatch.setattr(device, "_cpu_flags", lambda: flags)
    assert device.cpu_has_native_bf16() is bf16
    assert device.cpu_has_int8_dot() is int8_dot
    assert cpu_bf16_autocast("auto") is bf16
    assert cpu_bf16_autocast("bf16") is True  # asked for: on any CPU
    assert cpu_bf16_autocast("fp32") is False
    # the one-release copy at the old path agrees
    assert [loading.cpu_bf16_autocast(p) for p in ("auto", "bf16", "fp32")] == [bf16, True, False]


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_teacher_scores_run_the_path_each_kind_of_cpu_takes(tiny_bert, monkeypatch, native):
    """precision='auto': bf16 autocast on a CPU with bf16 units, float32 elsewhere; both run
    here and give the same scores to bf16's precision."""
    from sentence_transformers import SentenceTransformer

    from bge_rerank_plugins.finetune import TrainingGroup, biencoder_teacher_scores
    from bge_rerank_plugins.runtime import device

    model = SentenceTransformer(str(tiny_bert), device="cpu")
    seen: list[bool] = []
    encode = model.encode

    def spy(*args, **kwargs):
        import torch

        seen.append(torch.is_autocast_enabled("cpu"))
        return encode(*args, **kwargs)

    model.encode = spy
    groups = [TrainingGroup("what do pandas eat", ["bamboo"], ["tax on shares", "a car"])]
    monkeypatch.setattr(device, "_cpu_flags", lambda: AVX512_VNNI_BF16 if native else AVX2_ONLY)
    auto = biencoder_teacher_scores(groups, model, scale=1.0, precision="auto")
    assert seen and set(seen) == {native}
    exact = biencoder_teacher_scores(groups, model, scale=1.0, precision="fp32")
    assert auto[0].negative_scores == pytest.approx(exact[0].negative_scores, abs=2e-2)


# ----------------------------------------------------------------------------- torch._int_mm
def test_the_emulated_kernel_saturates_like_the_avx2_one():
    """The emulation reproduces what oneDNN's AVX2 kernel was measured to do: exact with weights
    within -64..64 for any activation, wrong for full-range weights."""
    import torch

    full = torch.full((3, 64), 127, dtype=torch.int8)
    assert torch.equal(saturating_int_mm(full, torch.full((64, 8), 64, dtype=torch.int8)),
                       torch.full((3, 8), 127 * 64 * 64, dtype=torch.int32))  # fmt: skip
    wrong = saturating_int_mm(full, torch.full((64, 8), 127, dtype=torch.int8))
    assert not torch.equal(wrong, torch.full((3, 8), 127 * 127 * 64, dtype=torch.int32))
    low = torch.full((3, 64), -127, dtype=torch.int8)  # +128 gives 1: no saturation
    assert torch.equal(saturating_int_mm(low, torch.full((64, 8), 127, dtype=torch.int8)),
                       torch.full((3, 8), -127 * 127 * 64, dtype=torch.int32))  # fmt: skip


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [("real", None), ("saturating", 64), ("missing", None), ("always-wrong", None)],
)
def test_int_mm_weight_limit_measures_the_kernel(monkeypatch, fresh_probes, kernel, expected):
    import torch

    from bge_rerank_plugins.runtime.backends import torch_int8

    if kernel == "real":
        # On this machine: 127 with VNNI / AMX (or off x86), 64 on x86 without.
        from bge_rerank_plugins.loading import cpu_has_int8_dot

        assert torch_int8.int_mm_weight_limit() in (127, 64)
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in ("ALL", "DEFAULT")
        if _x86_with_avx2() and cpu_has_int8_dot() and not capped:
            assert torch_int8.int_mm_weight_limit() == 127
        return
    if kernel == "saturating":
        monkeypatch.setattr(torch, "_int_mm", saturating_int_mm)
    elif kernel == "missing":

        def missing(*args):
            raise RuntimeError("_int_mm: no CPU kernel")

        monkeypatch.setattr(torch, "_int_mm", missing)
    else:
        monkeypatch.setattr(torch, "_int_mm", lambda a, b: saturating_int_mm(a, b) + 1)
    assert torch_int8.int_mm_weight_limit() == expected


def test_torch_int8_on_a_cpu_without_vnni_keeps_the_ranking(tiny_model, monkeypatch, fresh_probes):
    """The whole backend with the non-VNNI kernel's arithmetic (emulated): the probe picks
    -64..64 weights, every product is then exact, and the ranking holds. Full-range weights on
    the same kernel would not be exact (what the old per-token path would have hit)."""
    import torch

    from bge_rerank_plugins.runtime.backends import torch_int8
    from bge_rerank_plugins.testing import TINY_CORPUS

    passages = list(TINY_CORPUS)
    expected = CrossEncoderScorer(tiny_model, normalize=False).score(QUERY, passages)
    monkeypatch.setattr(torch, "_int_mm", saturating_int_mm)
    quantized = CrossEncoderScorer(tiny_model, normalize=False, backend="torch-int8")
    got = quantized.score(QUERY, passages)
    layers = [m for m in quantized.runner.model.modules() if hasattr(m, "weight_max")]
    assert layers and {m.weight_max for m in layers} == {64}
    assert max(int(m.weight_int8.abs().max()) for m in layers) <= 64
    assert max(abs(x - y) for x, y in zip(expected, got)) < 0.1
    assert _spearman(expected, got) >= 0.9
    # every product of the emulated kernel is exact at this range ...
    layer = layers[0]
    x = torch.randint(-127, 128, (9, layer.in_features), dtype=torch.int8)
    exact = x.long() @ layer.weight_int8.long()
    assert torch.equal(saturating_int_mm(x, layer.weight_int8).long(), exact)
    # ... and not at full range
    full = torch_int8.Int8Linear(torch.nn.Linear(layer.in_features, 16), weight_max=127)
    x[:] = 127
    assert not torch.equal(
        saturating_int_mm(x, full.weight_int8).long(), x.long() @ full.weight_int8.long()
    )


def test_int8_linear_at_the_non_vnni_weight_range_is_exact_int8_arithmetic():
    """Int8Linear with weight_max=64 computes round(x / row scale) @ round(W / (max|W| / 64))."""
    import torch

    from bge_rerank_plugins.runtime.backends.torch_int8 import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 10)
    x = torch.randn(4, 24) * torch.logspace(-2, 2, 4)[:, None]
    weight = linear.weight.detach().double()
    weight_scale = weight.abs().amax(dim=1) / 64
    weight_int = torch.round(weight / weight_scale[:, None])
    row_scale = x.double().abs().amax(dim=1, keepdim=True) / 127
    expected = (torch.round(x.double() / row_scale) @ weight_int.T) * row_scale * weight_scale
    expected += linear.bias.detach().double()
    with torch.inference_mode():
        layer = Int8Linear(linear, weight_max=64)
        got = layer(x)
    assert int(layer.weight_int8.abs().max()) == 64
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight_max"):
        Int8Linear(linear, weight_max=200)


_AVX2_SCRIPT = """
import json, sys
import torch
from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.runtime.backends import torch_int8
from bge_rerank_plugins.testing import TINY_CORPUS

model, query = sys.argv[1], sys.argv[2]
full = torch.full((17, 64), 127, dtype=torch.int8)
saturates = not torch.equal(torch._int_mm(full, full.t().contiguous()).long(),
                            full.long() @ full.long().t())
passages = list(TINY_CORPUS)
reference = CrossEncoderScorer(model, normalize=False).score(query, passages)
bf16 = CrossEncoderScorer(model, normalize=False, dtype="bfloat16").score(query, passages)
scorer = CrossEncoderScorer(model, normalize=False, backend="torch-int8")
int8 = scorer.score(query, passages)
limits = sorted({m.weight_max for m in scorer.runner.model.modules()
                 if hasattr(m, "weight_max")})
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "saturates": saturates, "limit": torch_int8.int_mm_weight_limit(),
                  "layer_limits": limits, "reference": reference, "int8": int8, "bf16": bf16}))
"""


@needs_avx2
@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE"], ids=["avx2", "avx512-without-vnni"])
def test_torch_int8_and_bf16_on_real_non_vnni_kernels(tiny_model, tmp_path, isa):
    """A subprocess whose oneDNN, ATen, FBGEMM and MKL are capped below VNNI runs the kernels an
    AVX2 (or AVX-512 without VNNI) CPU runs: their _int_mm saturates full-range weights, the
    probe sees it and picks -64..64, and torch-int8 keeps the ranking; bfloat16 without bf16
    units stays close to float32."""
    script = tmp_path / "avx2.py"
    script.write_text(textwrap.dedent(_AVX2_SCRIPT), encoding="utf-8")
    env = {**os.environ, **AVX2_ENV, "ONEDNN_MAX_CPU_ISA": isa, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model), QUERY],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["capability"] == "AVX2"
    assert result["saturates"], "the capped kernel should saturate full-range int8 weights"
    assert result["limit"] == 64 and result["layer_limits"] == [64]
    reference, int8, bf16 = result["reference"], result["int8"], result["bf16"]
    assert max(abs(x - y) for x, y in zip(reference, int8)) < 0.1
    assert _spearman(reference, int8) >= 0.9
    assert max(abs(x - y) for x, y in zip(reference, bf16)) < 0.1
    assert _spearman(reference, bf16) >= 0.9


# ----------------------------------------------------------------------------- ONNX Runtime
def _copy_model(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("onnx"))
    return target


def _int8_weights(graph: Path):
    """Every int8 initializer of an ONNX graph (the quantized MatMul weights)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))  # external data loaded from beside it
    return [
        numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 1
    ]


def test_u8s8_probe_reads_the_kernel(monkeypatch, fresh_probes):
    """The probe compares ONNX Runtime's product with the exact one: a session that computes
    like a saturating CPU makes it say so; a failing one makes it take the safe range."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from bge_rerank_plugins.loading import cpu_has_int8_dot
    from bge_rerank_plugins.runtime.backends import onnx as onnx_backend

    here = onnx_backend.u8s8_saturates()
    if _x86_with_avx2():
        # ONNX Runtime's documented behaviour: U8S8 saturates on x86 without VNNI, not with it.
        assert here is (not cpu_has_int8_dot())
    real = ort.InferenceSession

    class Saturating:
        def __init__(self, model_bytes, *args, **kwargs):
            graph = onnx.load_from_string(model_bytes).graph
            self.weights = numpy_helper.to_array(graph.initializer[0]).astype(np.int64)

        def run(self, names, feed):
            import torch

            a = torch.from_numpy(feed["a"].astype(np.int64) - 128).to(torch.int8)  # u8 -> s8
            b = torch.from_numpy(self.weights).to(torch.int8)
            # saturating_int_mm adds the 128 back before the saturating pair sums
            return [saturating_int_mm(a, b).numpy() + 128 * self.weights.sum(axis=0)]

    onnx_backend.u8s8_saturates.cache_clear()
    monkeypatch.setattr(ort, "InferenceSession", Saturating)
    assert onnx_backend.u8s8_saturates() is True
    onnx_backend.u8s8_saturates.cache_clear()

    def broken(*args, **kwargs):
        raise RuntimeError("no session")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    assert onnx_backend.u8s8_saturates() is True
    monkeypatch.setattr(ort, "InferenceSession", real)
    onnx_backend.u8s8_saturates.cache_clear()
    assert onnx_backend.u8s8_saturates() is here


@pytest.mark.parametrize("saturates", [True, False], ids=["no-vnni", "vnni"])
def test_onnx_int8_quantizes_for_the_cpu_and_keeps_the_ranking(
    tiny_model, tmp_path, monkeypatch, fresh_probes, saturates
):
    """Where U8S8 saturates, weights stay within -64..64: then no pair of u8 x s8 products can
    leave 16 bits (255 * 64 * 2 = 32,640), so the saturating kernel computes exactly what is
    measured here. The file name and the fingerprint record the settings."""
    pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.runtime.backends import onnx as onnx_backend
    from bge_rerank_plugins.testing import TINY_CORPUS

    model = _copy_model(tiny_model, tmp_path)
    monkeypatch.setattr(onnx_backend, "u8s8_saturates", lambda: saturates)
    passages = list(TINY_CORPUS)
    expected = CrossEncoderScorer(model, normalize=False).score(QUERY, passages)
    scorer = CrossEncoderScorer(model, normalize=False, backend="onnx-int8")
    got = scorer.score(QUERY, passages)
    name = "model.int8.reduce_range.onnx" if saturates else "model.int8.onnx"
    assert scorer.runner.path.name == name
    stamp = json.loads((model / "onnx" / "fingerprint.json").read_text())
    assert stamp["int8"] == {name: {"per_channel": True, "reduce_range": saturates}}
    weights = _int8_weights(model / "onnx" / name)
    assert weights
    largest = max(int(abs(w.astype(int)).max()) for w in weights)
    assert largest <= 64 if saturates else largest > 64
    assert max(abs(x - y) for x, y in zip(expected, got)) < 0.1
    assert _spearman(expected, got) >= 0.9


def test_an_int8_graph_made_for_another_cpu_is_not_reused(tiny_bert, tmp_path, monkeypatch):
    """A cache shared by a VNNI machine and an AVX2 one (a network mount, a copied model
    folder): each uses the graph quantized for its own kernels, and both variants coexist."""
    pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.loading import clear_model_cache
    from bge_rerank_plugins.runtime.backends import onnx as onnx_backend

    model = _copy_model(tiny_bert, tmp_path)
    folder = model / "onnx"

    def runner_on(saturates: bool):
        clear_model_cache()
        monkeypatch.setattr(onnx_backend, "u8s8_saturates", lambda: saturates)
        scorer = CrossEncoderScorer(model, backend="onnx-int8")
        scorer.score(QUERY, ["Beijing is the capital of China."])
        return scorer.runner.path

    full = runner_on(False)  # made "elsewhere", on a VNNI machine
    assert full.name == "model.int8.onnx"
    export_time = (folder / "model.onnx").stat().st_mtime_ns
    reduced = runner_on(True)  # the AVX2 machine does not take it
    assert reduced.name == "model.int8.reduce_range.onnx"
    assert (folder / "model.onnx").stat().st_mtime_ns == export_time  # the export is shared
    full_time = full.stat().st_mtime_ns
    assert runner_on(False) == full and full.stat().st_mtime_ns == full_time  # reused as is
    stamp = json.loads((folder / "fingerprint.json").read_text())
    assert set(stamp["int8"]) == {"model.int8.onnx", "model.int8.reduce_range.onnx"}
    # An int8 file whose settings the fingerprint does not vouch for (copied in from an older
    # version, whose model.int8.onnx had full-range weights everywhere) is quantized again.
    stamp["int8"]["model.int8.reduce_range.onnx"] = {"per_channel": True, "reduce_range": False}
    (folder / "fingerprint.json").write_text(json.dumps(stamp))
    reduced_time = reduced.stat().st_mtime_ns
    assert runner_on(True) == reduced and reduced.stat().st_mtime_ns != reduced_time
    largest = max(int(abs(w.astype(int)).max()) for w in _int8_weights(reduced))
    assert largest <= 64


def test_an_onnx_cache_from_before_the_per_cpu_settings_is_replaced(tiny_bert, tmp_path):
    """A format-3 cache (one model.int8.onnx, always full range) is exported and quantized
    again rather than trusted."""
    pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.loading import clear_model_cache
    from bge_rerank_plugins.runtime.backends import onnx as onnx_backend

    model = _copy_model(tiny_bert, tmp_path)
    CrossEncoderScorer(model, backend="onnx-int8").score(QUERY, ["a"])
    folder = model / "onnx"
    stamp = json.loads((folder / "fingerprint.json").read_text())
    old = {k: v for k, v in stamp.items() if k != "int8"}
    old.update(format=3, int8={"per_channel": True, "reduce_range": False})
    (folder / "fingerprint.json").write_text(json.dumps(old))
    (folder / "model.int8.onnx").write_bytes(b"stale")
    clear_model_cache()
    CrossEncoderScorer(model, backend="onnx-int8").score(QUERY, ["a"])
    stamp_now = json.loads((folder / "fingerprint.json").read_text())
    assert stamp_now["format"] == 4
    name = onnx_backend._int8_name(onnx_backend.int8_options())
    assert stamp_now["int8"] == {name: onnx_backend.int8_options()}
    assert (folder / name).stat().st_size > len(b"stale")
