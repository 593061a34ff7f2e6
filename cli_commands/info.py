"""``surgery info MODEL``: what was loaded."""

from __future__ import annotations

import typer

from cli_commands.base import (ArchOpt, InputOpt, JsonOpt, TrustOpt, WeightsOpt, app, examples, human, load_model, out,
                               print_json, shape_str, table)


@app.command("info", epilog=examples("surgery info zoo:yolov3", "surgery info model.pt --json"))
def info(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    arch: str = ArchOpt,
    weights: str = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: str = InputOpt,
    json_out: bool = JsonOpt,
):
    """Show what a model reference loads: format, arch, recipe, params, input shape, hashes."""
    from surgery.info import describe

    rep = describe(load_model(model, arch, weights, trust_pickle, input))
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
    rows += [(k, str(v)) for k, v in rep.metadata.items() if k not in ("sources",)]
    out().print(table(None, ["field", "value"], rows, fold=("field", "value")))
