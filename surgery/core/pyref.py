"""``py:package.module:factory[:k=v,...]`` — a user's own network class as a model reference.

The factory is a class or a function returning an ``nn.Module``; the module is imported from
the current directory or ``PYTHONPATH`` (the console script's own directory is what Python
puts first on ``sys.path``, so the current directory is added here, as ``python -m`` does).
Arguments are written as in zoo references and read as Python literals where they are one
(``width=16`` -> 16, ``mode=fast`` -> "fast", ``bias=true`` -> True).

Importing a module *is* running code (Hugging Face's ``trust_remote_code`` model). A ``py:``
reference the user types (a positional model, ``--arch py:...``, or a call of the library) is
their decision: :func:`name` records its module for this process. A ``py:`` reference that
comes *from a file* (a checkpoint's arch spec, a run directory's config) imports nothing unless
the user named that same module, or allowed every file's code for this load with
``--trust-code`` (:func:`trusting`); otherwise :class:`CodeNotNamed`, one line saying what to
type. Whatever is imported, only an ``nn.Module`` subclass or a function defined in the package
the reference names may be called, and only with literal arguments (numbers, strings, booleans,
None, lists of them): checked *before* calling (:func:`check_callable`, :func:`check_literal`).
A file never names the standard library. What the user's code prints goes to stderr (``--json``
on stdout stays clean); ``sys.exit`` and ``KeyboardInterrupt`` inside it become one error line.

Weights (``--weights FILE``) are a state_dict ``.pt`` (read with ``weights_only=True``) or a
``.safetensors`` file (when the ``safetensors`` package is installed), loaded strictly.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from surgery.core import plugins, safety
from surgery.core.build import DEFAULT_SEED, check_build, find_state_dict, load_state_strict, seeded
from surgery.core.errors import SurgeryError, first_line as _first_line
from surgery.core.files import existing, sha256
from surgery.core.net import ArchSpec, Net, describe_py
from surgery.core.refs import parse_zoo_ref

PREFIX = "py:"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_ref(ref: str) -> bool:
    return str(ref).startswith(PREFIX)


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return v if isinstance(v, (int, float, bool, tuple, list)) else text


def parse(ref: str) -> tuple[str, str, dict[str, Any]]:
    """``py:pkg.mod:factory[:k=v,...]`` -> ("pkg.mod", "factory", {k: value})."""
    body = str(ref)[len(PREFIX):]
    module, sep, rest = body.partition(":")
    if not sep or not rest:
        raise SurgeryError(f"bad model reference {ref!r}; write py:package.module:factory[:key=value,...], "
                           f"e.g. py:examples.mynet:MyNet:width=16")
    factory, _, args = rest.partition(":")
    if not _DOTTED.match(module) or not _DOTTED.match(factory):
        raise SurgeryError(f"bad model reference {ref!r}: {module!r} and {factory!r} must be dotted Python names; "
                           f"write py:package.module:factory[:key=value,...]")
    _, raw = parse_zoo_ref("zoo:x:" + args) if args else ("x", {})
    return module, factory, {k: _value(v) for k, v in raw.items()}


describe = describe_py  # py:module:factory[:k=v,...] (surgery.core.net)


@contextlib.contextmanager
def cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


class CodeNotNamed(SurgeryError):
    """A file names code the user did not name (the caller prefixes the file's name)."""


_NAMED: set[str] = set()  # modules the user named in this process (command line or library call)
_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("surgery_trust_code", default=False)


def name(module: str) -> None:
    """The user named ``module`` (``py:module:factory`` typed by them): a file may name it too."""
    _NAMED.add(str(module))


def named(module: str) -> bool:
    return module in _NAMED or _TRUST.get()


@contextlib.contextmanager
def trusting(trust: bool = True):
    """``--trust-code``: code that a file names may be imported while this context is open (and
    a module imported so stays named for the process: the user vouched for it)."""
    token = _TRUST.set(bool(trust) or _TRUST.get())
    try:
        yield
    finally:
        _TRUST.reset(token)


def _refuse_stdlib(module: str, ref: str) -> None:
    top = module.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise SurgeryError(f"{ref} names the standard library module {top!r}, not a network; "
                           f"surgery only builds networks from a checkpoint's own classes")


def check_literal(kwargs: Mapping[str, Any], ref: str) -> None:
    """Arguments from a reference or a file are literals only: numbers, strings, booleans, None
    and lists/tuples of them (no mappings, no objects)."""
    def ok(v, depth=0) -> bool:
        if v is None or isinstance(v, (bool, int, float, str)):
            return True
        return isinstance(v, (list, tuple)) and depth < 4 and all(ok(x, depth + 1) for x in v)

    for k, v in dict(kwargs).items():
        if not isinstance(k, str) or not k.isidentifier() or not ok(v):
            raise SurgeryError(f"{ref}: argument {str(k)!r} is a {type(v).__name__}; arguments are numbers, strings, "
                               f"booleans or lists of them")


def check_callable(obj: Any, module: str, factory: str, ref: str) -> None:
    """Only an ``nn.Module`` subclass or a plain function defined in the package ``module``
    belongs to may be called (no reaching through an attribute path into another package:
    ``examples.mynet:torch.hub.load``), decided before the call."""
    top = module.split(".", 1)[0]
    owner = getattr(obj, "__module__", "") or ""
    if owner.split(".", 1)[0] != top:
        raise SurgeryError(f"{ref}: {factory!r} is defined in {owner or 'no module'!r}, not in the package {top!r} the "
                           f"reference names; refused. Name the package that defines it")
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise SurgeryError(f"{ref}: {factory!r} is a class but not an nn.Module; name the network class or a "
                               f"function that builds one")
    elif not inspect.isfunction(obj):
        raise SurgeryError(f"{ref}: {factory!r} is a {type(obj).__name__}, not a class or function that builds a network")


@contextlib.contextmanager
def _user_code(ref: str, what: str):
    """Run the user's code: its prints go to stderr; ``sys.exit``/``KeyboardInterrupt`` inside it
    become one error line instead of ending the tool."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as e:
        raise SurgeryError(f"{ref}: {what} called sys.exit({e.code!r}); a network factory must return a module") from None
    except KeyboardInterrupt:
        raise SurgeryError(f"{ref}: {what} raised KeyboardInterrupt (interrupted)") from None


def resolve(module: str, factory: str, *, from_file: bool = False) -> Callable[..., Any]:
    """Import ``module`` and return its attribute ``factory`` (dotted: ``Outer.make``).

    ``from_file``: a file names it; refused unless the user named ``module`` (:func:`name`)
    or passed ``--trust-code`` (:func:`trusting`)."""
    ref = f"{PREFIX}{module}:{factory}"
    if from_file:
        _refuse_stdlib(module, ref)
        if not named(module):
            raise CodeNotNamed(f"names code `{ref}`; pass `--arch {ref}` (or `--trust-code`) to import it")
    with cwd_on_path(), _user_code(ref, f"importing {module!r}"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing = e.name or module
            raise SurgeryError(f"{ref}: cannot import {module!r} (no module named {missing!r}); run from the folder "
                               f"that holds it or add that folder to PYTHONPATH") from None
        except SurgeryError:
            raise
        except Exception as e:  # the user's module itself fails on import
            raise SurgeryError(f"{ref}: importing {module!r} failed ({type(e).__name__}: {_first_line(e)})") from None
    if from_file:
        name(module)  # trusted once: later rebuilds of the same arch in this process need no flag
    obj: Any = mod
    for part in factory.split("."):
        if not hasattr(obj, part):
            from surgery.core.errors import suggest

            names = [n for n in dir(obj) if not n.startswith("_")]
            raise SurgeryError(f"{ref}: module {module!r} has no attribute {factory!r}{suggest(part, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SurgeryError(f"{ref}: {factory!r} is a {type(obj).__name__}, not a class or function that builds a network")
    check_callable(obj, module, factory, ref)
    return obj


def build(module: str, factory: str, kwargs: Mapping[str, Any] | None = None, *, from_file: bool = False) -> nn.Module:
    """Call the factory with ``kwargs``; one-line errors when it raises or returns no module."""
    ref = describe(module, factory, kwargs or {})
    check_literal(kwargs or {}, ref)
    fn = resolve(module, factory, from_file=from_file)
    try:
        with cwd_on_path(), _user_code(ref, f"{factory}(...)"):
            obj = fn(**dict(kwargs or {}))
    except SurgeryError:
        raise
    except TypeError as e:
        raise SurgeryError(f"{ref}: {factory} does not take these arguments ({_first_line(e)})") from None
    except Exception as e:  # the user's code: any exception is theirs to see, in one line
        raise SurgeryError(f"{ref}: {factory}(...) raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(obj, nn.Module):
        raise SurgeryError(f"{ref}: {factory}(...) returned a {type(obj).__name__}, not an nn.Module")
    return obj


def read_state(path: str | Path) -> dict:
    """A state_dict from ``.pt``/``.pth`` (weights only, no pickled code) or ``.safetensors``."""
    p = existing(path, "weights file")
    if p.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SurgeryError(f"{p}: reading .safetensors needs the 'safetensors' package; pip install safetensors "
                               f"(or save the state_dict with torch.save)") from None
        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as e:
            raise SurgeryError(f"{p}: not a readable safetensors file ({type(e).__name__}: {_first_line(e)})") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise SurgeryError(f"{p}: not a state_dict torch can read without running code ({type(e).__name__}: "
                           f"{_first_line(e)}); save it with torch.save(model.state_dict(), ...)") from None
    if isinstance(obj, Mapping) and obj.get("format") == "surgery-checkpoint":
        obj = obj.get("state_dict")
    state = find_state_dict(obj)
    if state is None:
        raise SurgeryError(f"{p}: holds no state_dict (found {type(obj).__name__}); save model.state_dict()")
    return state


def input_shape_of(module: nn.Module, ref: str, given=None) -> tuple[int, ...]:
    shape = given or getattr(module, "input_shape", None)
    if not shape:
        raise SurgeryError(f"{ref}: the model records no input shape (no input_shape attribute); pass --input CxHxW")
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise SurgeryError(f"{ref}: its input_shape {shape!r} is not a list of integers; pass --input CxHxW") from None


def load(ref: str, *, weights: str | None = None, input_shape=None, from_file: bool = False):
    """A ``py:`` reference -> an editable :class:`Net` (arch kind ``"py"``). ``from_file``: the
    reference was read from a file (a run directory's config), not typed: it imports only what
    the user named (module docstring)."""
    module_name, factory, kwargs = parse(ref)
    if not from_file:
        name(module_name)
    arch = ArchSpec("py", f"{module_name}:{factory}", kwargs)
    check_build(arch.build, ref)
    with seeded(DEFAULT_SEED):
        module = arch.build()
    shape = safety.check_shape(input_shape_of(module, ref, input_shape), f"{ref}: input shape")
    meta: dict[str, Any] = {"seed": DEFAULT_SEED, "weights": None}
    if weights:
        state = read_state(weights)
        load_state_strict(module, state, weights)
        meta = {"weights": str(weights), "sources": {str(weights): sha256(Path(weights))}}
    module.eval()
    return Net(module, arch, shape, source=ref, format="py", metadata=meta)


def arch_of_pickled(obj: nn.Module, path, arch: str | None):
    """(arch spec, None) for a trusted pickled module, or (None, why) when it cannot be rebuilt.

    The spec is ``--arch py:...`` when given, else its class called without arguments — which
    must rebuild the same tensors. A class that cannot be imported again (defined in a script's
    ``__main__`` or a function) leaves the module analysable but not editable."""
    if arch and is_ref(arch):
        module_name, factory, kwargs = parse(arch)
        spec = ArchSpec("py", f"{module_name}:{factory}", kwargs)
    else:
        cls = type(obj)
        module_name, qual = cls.__module__, cls.__qualname__
        if module_name == "__main__" or "<locals>" in qual:
            return None, (f"its class {qual} was defined in a script ({module_name}), so surgery cannot rebuild it; "
                          f"move the class into a module and pass --arch py:MODULE:{cls.__name__}")
        spec = ArchSpec("py", f"{module_name}:{qual}", {})
    try:
        with torch.device("meta"):
            rebuilt = spec.build_own()
    except SurgeryError as e:
        return None, f"cannot rebuild its architecture ({e}); pass --arch py:MODULE:FACTORY[:k=v]"
    want = {k: tuple(v.shape) for k, v in obj.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got.get(k)]
        return None, (f"{spec.describe()} builds other tensors than the pickled module (e.g. {diff[0]}); "
                      f"pass --arch py:MODULE:FACTORY[:k=v] with the arguments it was built with")
    return spec, None


@plugins.arch_kind("py")
def _build_spec(spec: ArchSpec, *, own: bool = False) -> nn.Module:
    """A ``py`` arch spec: what a file names imports only what the user named (``own``: they
    named this very spec, e.g. a trusted pickle's class or their own reference)."""
    module, sep, factory = spec.name.partition(":")
    if not sep:
        raise SurgeryError(f"py arch spec {spec.name!r} is not 'package.module:factory'")
    if own:
        name(module)
    return build(module, factory, spec.kwargs, from_file=True)


@plugins.prefix_loader(PREFIX)
def _load_ref(ref: str, *, weights=None, input_shape=None, from_file: bool = False, **_options) -> Net:
    return load(ref, weights=weights, input_shape=input_shape, from_file=from_file)
