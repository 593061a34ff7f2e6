"""``.onnx`` model references: an ONNX CNN imported into a ``torch.fx.GraphModule`` of standard
torch modules (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``, ``nn.Hardswish``, ...).

Why an importer of our own rather than onnx2torch: onnx2torch imports torchvision at module
level, and torchvision's registry wheels are CUDA builds that do not load with this project's
CPU torch (DESIGN.md). Its converted modules also branch on ``x.is_floating_point()``, keep
shape arithmetic as host-side int64 tensors and classifiers as buffers, which is what broke
``layers``/``fold``/``onion split``/``heal`` on the real networks of issue 21. Here:

1. :mod:`.prepass` — read and validate, ``Constant`` nodes -> initializers, input pinned to
   ``--input`` (or the graph's static shape), ONNX shape inference, shape arithmetic folded to
   constants (twice, at two batch sizes, to know which dimensions follow the batch);
2. :mod:`.patterns` — decomposed activations (``Add->Clip->Mul->Div`` hardswish, ``x*sigmoid(x)``)
   become one node, bias ``Add``s join their conv/``MatMul``;
3. :mod:`.convert` with :mod:`.layers` and :mod:`.tensors` — each node to a standard module or
   an allow-listed function in a JSON *graph spec*; the weights to a state_dict (every float
   weight a parameter);
4. :mod:`.build` — the spec to a GraphModule. The spec (without weights) is what a checkpoint
   stores as ``ArchSpec(kind="onnx", cfg=...)``, so a saved import reloads pickle-free and
   without the ``.onnx`` file;
5. :mod:`.check` — the imported module against onnxruntime on probe inputs, at every import.

An op outside the supported set is refused in one line naming the op and the node.
"""

from __future__ import annotations

import time
from pathlib import Path

from surgery.core import plugins
from surgery.core.files import existing
from surgery.core.files import sha256 as file_sha256
from surgery.core.onnx_import.build import build_module, parse_spec, spec_text  # noqa: F401

FORMAT = "onnx"


def import_graph(path: str | Path, input_shape: tuple[int, ...] | None = None):
    """(prepared graph, spec, weights): the conversion without building or checking."""
    from surgery.core.onnx_import import layers, tensors  # noqa: F401  (fill the handler registry)
    from surgery.core.onnx_import.convert import Converter
    from surgery.core.onnx_import.patterns import rewrite
    from surgery.core.onnx_import.prepass import prepare

    prep = prepare(Path(path), input_shape)
    nodes = rewrite(prep.a.nodes, prep.a.consts, set(prep.outputs))
    cv = Converter(prep)
    spec = cv.run(nodes)
    return prep, spec, cv.weights


def load_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None, *, sha256: str | None = None):
    """A :class:`surgery.core.net.Net` for an ``.onnx`` file (format ``"onnx"``), checked against
    onnxruntime. ``metadata["onnx_import"]`` records the file, its sha256, opset, producer, the
    import time and the check (``verify``: ``max_abs``, ``max_rel``)."""
    import torch

    from surgery.core.net import ArchSpec, Net
    from surgery.core.onnx_import.check import against_onnxruntime, load_weights

    path = Path(path)
    t0 = time.perf_counter()
    prep, spec, weights = import_graph(path, input_shape)
    module = build_module(spec, source=str(path))
    load_weights(module, weights, path)
    module.eval()
    import_s = time.perf_counter() - t0
    with torch.no_grad():
        rep = against_onnxruntime(prep, module)
    if sha256 is None:
        import hashlib

        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    model = prep.model
    info = {"file": path.name, "sha256": sha256, "opset": prep.opset,
            "producer": f"{model.producer_name} {model.producer_version}".strip() or "unknown",
            "import_s": round(import_s, 3),
            "verify": {"against": "onnxruntime", "max_abs": rep.max_abs, "max_rel": rep.max_rel,
                       "probes": rep.probes, "batch": rep.batch}}
    arch = ArchSpec(FORMAT, path.name, {"sha256": sha256, "opset": prep.opset}, cfg=spec_text(spec))
    meta = {"sources": {str(path): sha256}, "onnx_import": info,
            "weights_load": {"file": str(path), "cutoff": None}}
    return Net(module, arch, prep.input_shape, source=str(path), format=FORMAT, metadata=meta)


@plugins.arch_kind("onnx")
def _build_spec(spec, **_options):
    """An imported ONNX graph's arch spec: its layer spec (no weights, no code) in ``cfg``."""
    return build_module(spec.cfg or "", source=spec.name)


@plugins.suffix_loader(".onnx")
def _load(ref: str, *, input_shape=None, **_options):
    """An ``.onnx`` reference: imported into standard torch modules, checked against onnxruntime."""
    path = existing(ref)
    return load_onnx(path, input_shape, sha256=file_sha256(path))
