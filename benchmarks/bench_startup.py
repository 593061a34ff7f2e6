"""How fast the CLI starts: ``surgery --help`` and ``surgery CMD --help`` against
``python -c "import torch"`` (what every start paid when torch was imported at module level).

Each command is run ``--repeats`` times round-robin (the order rotates, so none always runs on
a warm or a cold cache first); the figure is the median wall time of the whole process.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 7]

Goal: every help under 0.3 s and well under the torch import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURGERY = str(Path(sys.executable).parent / "surgery")


def commands() -> dict[str, list[str]]:
    sys.path.insert(0, str(ROOT))
    from cli_commands.base import app
    from cli_commands.lazy import load_all

    load_all()  # command modules load lazily; register every one (imports no torch)

    runs = {"surgery --help": [SURGERY, "--help"]}
    for c in app.registered_commands:
        name = c.name or c.callback.__name__
        runs[f"surgery {name} --help"] = [SURGERY, name, "--help"]
    for g in app.registered_groups:  # zoo, data, onion and their subcommands
        sub = g.typer_instance
        runs[f"surgery {g.name} --help"] = [SURGERY, g.name, "--help"]
        for c in sub.registered_commands:
            name = c.name or c.callback.__name__
            runs[f"surgery {g.name} {name} --help"] = [SURGERY, g.name, name, "--help"]
    runs['python -c "import torch"'] = [sys.executable, "-c", "import torch"]
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    runs = commands()
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for i in range(args.repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            subprocess.run(runs[name], capture_output=True, check=True, cwd=ROOT)
            times[name].append(time.perf_counter() - t)
    torch_s = statistics.median(times['python -c "import torch"'])
    print(f"{'command':<34} {'median s':>9} {'vs import torch':>16}")
    for name in names:
        med = statistics.median(times[name])
        flag = "" if name.startswith("python") or med < 0.3 else "  (over 0.3 s)"
        print(f"{name:<34} {med:9.3f} {med / torch_s:15.2f}x{flag}")


if __name__ == "__main__":
    main()
