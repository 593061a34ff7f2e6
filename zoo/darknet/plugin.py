"""Darknet's part of the core's registries (:mod:`surgery.core.plugins`): arch specs of kind
``darknet`` (the cfg text travels in the spec) and ``.cfg`` / ``.weights`` files."""

from __future__ import annotations

from pathlib import Path

from surgery.core import plugins, safety
from surgery.core.build import DEFAULT_SEED, check_build, seeded
from surgery.core.errors import SurgeryError
from surgery.core.files import existing, note_input, sha256
from surgery.core.net import ArchSpec, Net
from zoo.darknet.cfg import parse_cfg, read_cfg_file
from zoo.darknet.net import build_darknet
from zoo.darknet.weights import load_weights


@plugins.arch_kind("darknet")
def _build(spec: ArchSpec, **_options):
    if not spec.cfg:
        raise SurgeryError(f"darknet arch spec {spec.name!r} carries no cfg text")
    return build_darknet(spec.cfg, source=spec.name)


@plugins.suffix_loader(".cfg", ".weights")
def _load(ref: str, *, arch=None, weights=None, weights_cutoff=None, **_options) -> Net:
    path = existing(ref)
    if path.suffix.lower() == ".cfg":
        return load_darknet(path, weights, weights_cutoff)
    # bare Darknet weights: the cfg comes from arch=FILE.cfg
    if not (arch and str(arch).lower().endswith(".cfg")):
        raise SurgeryError(f"{ref}: a .weights file needs its cfg; pass --arch FILE.cfg (or the .cfg with --weights {ref})")
    if weights:
        raise SurgeryError(f"{ref} is already a .weights file; drop the extra weights file {weights}")
    net = load_darknet(existing(arch, "cfg file"), str(path), weights_cutoff)
    return net.evolve(net.module, source=ref)


def load_darknet(path: Path, weights: str | None, cutoff: int | None = None) -> Net:
    """A Darknet net built from the fixed seed, then its .weights (whole, the first ``cutoff``
    layers, or a prefix inferred from the file size). ``metadata``: ``random_weights`` (no
    .weights at all: every tensor is the seeded init), ``seed``, ``weights_load``."""
    text = read_cfg_file(path)
    meta_module = check_build(lambda: build_darknet(text, source=str(path)), str(path))
    safety.check_shape(meta_module.input_shape, f"{path}: [net] input size")
    with seeded(DEFAULT_SEED):  # what the file does not hold is the same on every load
        module = build_darknet(text, source=str(path))
    sources = {str(path): sha256(path)}
    wpath = Path(weights) if weights else path.with_suffix(".weights")
    if weights:
        existing(wpath, "weights file")
    meta: dict = {"sources": sources, "weights": str(wpath) if wpath.exists() else None}
    if wpath.exists():
        note_input(wpath)
        rep = load_weights(module, wpath, cutoff="infer" if cutoff is None else cutoff)
        sources[str(wpath)] = sha256(wpath)
        meta["random_weights"] = False
        meta["weights_load"] = {"file": str(wpath), "cutoff": rep.cutoff, "cutoff_inferred": rep.inferred,
                                "layers_from_file": list(rep.from_file), "layers_initialised": list(rep.initialised)}
        if rep.initialised:
            meta["seed"] = DEFAULT_SEED
    elif cutoff is not None:
        raise SurgeryError(f"{path}: a weights cutoff ({cutoff}) but no .weights file; pass the weights file too")
    else:
        meta["random_weights"], meta["seed"] = True, DEFAULT_SEED
    # a cfg whose layers read side files (a softmax tree) carries them inlined in module.cfg_text()
    arch = ArchSpec("darknet", path.name, {}, cfg=module.cfg_text() if module.blocks != parse_cfg(text, str(path)) else text)
    return Net(module, arch, tuple(module.input_shape), source=str(path), format="darknet", metadata=meta)
