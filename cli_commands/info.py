"""``surgery info MODEL``: what was loaded."""

from __future__ import annotations

import typer

from cli_commands.base import (ArchOpt, InputOpt, JsonOpt, TrustOpt, WeightsCutoffOpt, WeightsOpt, app,
                               describe_weights, examples, human, load_model, out, print_json, shape_str, table)


@app.command("info", epilog=examples("surgery info zoo:yolov3", "surgery info model.pt --json"))
def info(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    arch: str = ArchOpt,
    weights: str = WeightsOpt,
    weights_cutoff: int = WeightsCutoffOpt,
    trust_pickle: bool = TrustOpt,
    input: str = InputOpt,
    json_out: bool = JsonOpt,
):
    """Show what a model reference loads: format, arch, recipe, params, input shape, hashes."""
    from surgery.info import describe

    rep = describe(load_model(model, arch, weights, trust_pickle, input, weights_cutoff))
    if json_out:
        print_json(rep)
        return
    rows = [
        ("model", rep.model),
        ("format", rep.format),
        ("arch", rep.arch or "(analysis only)"),
        ("params", f"{rep.params:,} ({human(rep.params)})"),
        ("buffers", f"{rep.buffers:,}"),
        ("dtype", rep.dtype),
        ("input shape", shape_str(rep.input_shape)),
        ("outputs", ", ".join(shape_str(s) for s in rep.output_shapes)),
        ("recipe", " → ".join(s["op"] for s in rep.recipe) or "(none)"),
    ]
    rows += [(f"sha256 {p}", h) for p, h in rep.sources.items()]
    weights_line = describe_weights(rep.metadata)  # a Darknet net: where its weights came from
    if weights_line:
        rows.append(("weights", weights_line))
    imported = rep.metadata.get("onnx_import")  # an .onnx import: what it came from and how exact it is
    if isinstance(imported, dict):
        v = imported.get("verify") or {}
        rows.append(("onnx import", f"{imported.get('file')} (opset {imported.get('opset')}, {imported.get('producer')}) "
                                    f"in {imported.get('import_s')} s; vs onnxruntime: max abs {v.get('max_abs', 0):.3g}, "
                                    f"max rel {v.get('max_rel', 0):.3g} ({v.get('probes')} probes of batch "
                                    f"{v.get('batch')})"))
    shown = ("sources", "onnx_import") + (("weights", "weights_load", "random_weights", "seed") if weights_line else ())
    rows += [(k, str(v)) for k, v in rep.metadata.items() if k not in shown]
    out().print(table(None, ["field", "value"], rows, fold=("field", "value")))
