"""``surgery zoo list`` and ``surgery zoo build``."""

from __future__ import annotations

from typing import List

import typer

from cli_commands.base import (ForceOpt, JsonOpt, SurgeryError, app, examples, human, out,
                               print_json, shape_str, table, wrote)

zoo_app = typer.Typer(help="List and build zoo architectures.", no_args_is_help=True,
                      context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(zoo_app, name="zoo", help="List and build zoo architectures (zoo:NAME references).")


@zoo_app.command("list", epilog=examples("surgery zoo list", "surgery zoo list --json"))
def zoo_list(json_out: bool = JsonOpt):
    """List zoo entries with their arguments, input shapes and published parameter counts."""
    from zoo import registry

    rows = []
    for e in registry.entries():
        rows.append({
            "name": e.name, "family": e.family, "input_shape": list(e.shape_for({})),
            "arguments": {k: v for k, v in e.defaults().items()},
            "published_params": e.published_params, "source": e.source, "description": e.description,
        })
    if json_out:
        print_json({"models": rows})
        return
    out().print(table("zoo models (use as zoo:NAME[:key=value,...])",
                        ["name", "family", "input", "published params", "arguments"],
                        [(r["name"], r["family"], shape_str(r["input_shape"]),
                          human(r["published_params"]) if r["published_params"] else "-",
                          ", ".join(f"{k}={v}" for k, v in r["arguments"].items()))
                         for r in rows], right=["published params"], drop=["family"]))


@zoo_app.command("build", epilog=examples("surgery zoo build resnet50:root=8", "surgery zoo build yolov3 -o base.pt",
                                          "surgery zoo build resnet18 --set num_classes=10 --seed 1 -o r18.pt"))
def zoo_build(
    name: str = typer.Argument(..., help="Zoo name, e.g. resnet50 (or zoo:resnet50:root=8)."),
    set_: List[str] = typer.Option([], "--set", help="Builder argument key=value (repeatable)."),
    output: str = typer.Option(None, "-o", "--output", help="Output .pt checkpoint (default: NAME[-k=v].pt in the "
                                                            "current directory, printed)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random initialisation."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """Build a zoo architecture (random init from --seed) and save it as a checkpoint."""
    from surgery.core import io as sio

    ref = name if name.startswith("zoo:") else f"zoo:{name}"
    zname, kwargs = sio.parse_zoo_ref(ref)
    for kv in set_:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise SurgeryError(f"bad --set {kv!r}; write --set key=value")
        kwargs[k.strip()] = v.strip()
    if output is None:
        tag = "".join(f"-{k}={v}" for k, v in kwargs.items())
        output = str(sio.default_output([f"zoo:{zname}"], tag))
    sio.check_outputs([output], force=force)
    sio.check_checkpoint_name(output)
    from zoo.plugin import build_zoo

    net = build_zoo(zname, kwargs, seed=seed)
    path = sio.save(net, output, force=force)
    rep = {"output": str(path), "model": ref, "arch": net.arch.describe(), "params": net.params, "input_shape": list(net.input_shape),
           "seed": seed}
    if json_out:
        print_json(rep)
    else:
        out().print(f"{rep['arch']}: {net.params:,} params, input {shape_str(net.input_shape)}, seed {seed}",
                    markup=False, soft_wrap=True)
        wrote(path)
