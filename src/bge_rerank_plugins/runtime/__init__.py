"""The runtime layer: how a checkpoint becomes a callable, below the scorer.

* :mod:`.device`: device and dtype choice, CPU feature probes, handing freed memory back;
* :mod:`.loading`: :class:`~.loading.LoadedModel`, :func:`~.loading.load_cross_encoder`, the
  process cache and the model-file checks;
* :mod:`.half_weights`: loading straight into half precision a slice at a time;
* :mod:`.first_token`: the last encoder layer computed for the first token only;
* :mod:`.families`: which checkpoints the scorer can run, and how it reads a score;
* :mod:`.backends`: the registry of backends and their runners (torch, ONNX Runtime, int8);
* :mod:`.float32_rescue`: the float32 rerun of a half-precision batch with non-finite logits,
  shared by every torch runner.

It imports only the package's leaf modules (``errors``, ``tokenization``, ...), never the
scorer or anything above it.
"""
