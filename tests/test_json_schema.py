"""Every command's ``--json`` against its section in docs/JSON.md.

The schema is parsed from the doc, so a section another command adds is tested as soon as it
is written; the commands come from the typer app, so a command without a section fails.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

DOC = ROOT / "docs" / "JSON.md"
TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "object": dict, "map": dict}


def parse_doc(text: str) -> dict[str, dict]:
    """``{command: {"lines": [...], "fields": {path: (types, optional)}}}`` from the doc."""
    sections: dict[str, dict] = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        code = re.search(r"```sh\n(.*?)```", body, flags=re.S)
        fields = {}
        for m in re.finditer(r"^\| `([^`]+)` \| ([^|\\]+(?:\\\|[^|\\]+)*) \|", body, flags=re.M):
            path, typ = m.group(1), m.group(2).strip().replace("\\|", "|")
            optional = typ.endswith("?")
            names = typ.rstrip("?").split("|")
            for n in names:
                assert n in TYPES or n in ("null", "any"), f"## {title}: unknown type {n!r} for {path}"
            fields[path] = (tuple(names), optional)
        if code:
            sections[title.strip()] = {"lines": [l for l in code.group(1).splitlines() if l.strip()],
                                       "fields": fields}
    return sections


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("[]."))
    if cut < 0:
        return ""
    return path[:cut + 2] if path[cut:cut + 3] == "[]." else path[:cut]


def _type_ok(value, names) -> bool:
    if value is None:
        return "null" in names or "any" in names
    for n in names:
        if n == "any":
            return True
        t = TYPES.get(n)
        if t is not None and isinstance(value, t) and not (isinstance(value, bool) and n in ("int", "float")):
            return True
    return False


def check(value, fields: dict, prefix: str = "") -> list[str]:
    """Problems of ``value`` (an object at ``prefix``) against the documented fields."""
    problems = []
    children = {p: spec for p, spec in fields.items() if _parent(p) == prefix}
    for p, (names, optional) in children.items():
        key = p[len(prefix) + 1:] if prefix else p
        if key not in value and not optional:
            problems.append(f"missing field {p}")
    for key, v in value.items():
        p = f"{prefix}.{key}" if prefix else key
        if p not in fields:
            problems.append(f"undocumented field {p}")
            continue
        names, _ = fields[p]
        if not _type_ok(v, names):
            problems.append(f"{p}: {type(v).__name__} is not {'|'.join(names)}")
            continue
        if isinstance(v, dict) and "map" not in names:
            problems += check(v, fields, p)
        elif isinstance(v, list) and any(f.startswith(p + "[].") for f in fields):
            for item in v:
                if isinstance(item, dict):
                    problems += check(item, fields, p + "[]")
                else:
                    problems.append(f"{p}[]: {type(item).__name__} is not an object")
    return problems


def app_commands() -> list[str]:
    """Every command of the real typer app ("zoo list" for a subcommand)."""
    sys.path.insert(0, str(ROOT))
    from cli_commands.base import app
    from cli_commands.lazy import load_all

    load_all()  # command modules load lazily; register every one

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for g in app.registered_groups:
        names += [f"{g.name} {c.name or c.callback.__name__}" for c in g.typer_instance.registered_commands]
    return sorted(names)


SECTIONS = parse_doc(DOC.read_text())


def test_the_parser_reads_paths_types_and_optional_marks():
    doc = ("## demo\n\n```sh\nsurgery demo --json\n```\n\n| field | type | unit |\n| --- | --- | --- |\n"
           "| `a` | int | x |\n| `b` | list? | y |\n| `b[].c` | float\\|null | z |\n")
    s = parse_doc(doc)["demo"]
    assert s["lines"] == ["surgery demo --json"]
    assert s["fields"] == {"a": (("int",), False), "b": (("list",), True), "b[].c": (("float", "null"), False)}
    assert check({"a": 1, "b": [{"c": None}]}, s["fields"]) == []
    assert check({"a": 1.5}, s["fields"]) == ["a: float is not int"]
    assert check({"b": [{"c": 1.0, "d": 2}]}, s["fields"]) == ["missing field a", "undocumented field b[].d"]
    assert check({"a": True}, s["fields"]) == ["a: bool is not int"]


def test_every_command_has_a_section():
    missing = [c for c in app_commands() if c not in SECTIONS]
    assert not missing, f"commands without a section in docs/JSON.md: {missing}"


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_json_matches_the_doc(command, tmp_path):
    section = SECTIONS[command]
    checked = 0
    for line in section["lines"]:
        args = shlex.split(line)
        assert args[0] == "surgery", line
        res = run_cli(*args[1:], cwd=tmp_path)
        assert res.code == 0, f"{line}: exit {res.code}\n{res.err}"
        if "--json" in args:
            problems = check(json.loads(res.out), section["fields"])
            assert not problems, f"{line}:\n  " + "\n  ".join(problems)
            checked += 1
    assert checked, f"## {command}: no --json line to check"
