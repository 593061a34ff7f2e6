"""The counted side of ``surgery profile`` (:mod:`analyzers.profile`): each entry's MACs,
params and bytes from the cost analyzer and its roofline floor, computed once per (model,
dtype, batch, spec); chain entries (models run one after the other on one input) and the
roofline spec of a device; a row's error line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from analyzers.latency import Unavailable
from surgery.core.errors import SurgeryError, first_line
from surgery.core.net import Net


def roofline_spec_name(device: torch.device) -> str | None:
    """Map the device to an :mod:`analyzers.roofline` spec name (None: no spec known)."""
    if device.type == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for key, spec in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100")):
        if key in name:
            return spec
    return None


def row_error(e: BaseException, limit: int = 300) -> str:
    """A row's error: the first line (:func:`surgery.core.errors.first_line`), after the
    exception's type unless it is one of ours (already a sentence for people)."""
    line = first_line(e, limit)
    if isinstance(e, (SurgeryError, Unavailable)) or line == type(e).__name__:
        return line
    return first_line(f"{type(e).__name__}: {line}", limit)


class Costs:
    """Cost-analyzer and roofline results per (model, dtype, batch, spec), computed once."""

    def __init__(self, precision_for: Callable[[str], str | None] = lambda dtype: None):
        self.precision_for = precision_for
        self._specs: dict = {}  # name -> DeviceSpec | error text
        self._counters: dict = {}
        self._cache: dict = {}
        self._reports: dict = {}  # cache key -> the CostReports, to bound them again on a refreshed spec

    def spec(self, name: str | None):
        """(DeviceSpec, None) or (None, why not)."""
        if name is None:
            return None, "no roofline spec for this device; pass --device-spec (h100-sxm, h200, a100, cpu)"
        if name not in self._specs:
            try:
                from analyzers.roofline import get_spec

                self._specs[name] = get_spec(name)
            except Exception as e:  # the roofline module may be missing or reject the name
                self._specs[name] = f"roofline spec {name!r}: {row_error(e)}"
        got = self._specs[name]
        return (None, got) if isinstance(got, str) else (got, None)

    def get(self, key: int, net: Net, batch: int, dtype: str, spec_name: str | None) -> dict:
        ck = (key, batch, dtype, spec_name)
        if ck in self._cache:
            return self._cache[ck]
        parts = chain_parts(net)
        res: dict = {"params": net.params}
        try:
            from analyzers.cost import CostCounter

            reps = []
            for i, part in enumerate(parts):
                if (key, i, dtype) not in self._counters:
                    self._counters[(key, i, dtype)] = CostCounter(part, dtype=dtype)
                reps.append(self._counters[(key, i, dtype)].run(None, batch))
            res.update(macs=sum(int(r.totals.macs) for r in reps) // batch,
                       bytes=sum(int(r.totals.bytes) for r in reps), params=sum(int(r.totals.params) for r in reps))
            self._reports[ck] = reps
            res.update(self._floor(reps, dtype, spec_name))
        except Exception as e:  # the analyzer is optional to a timing: report, keep going
            res["cost_error"] = f"cost analyzer: {row_error(e)}"
        self._cache[ck] = res
        return res

    def _floor(self, reps, dtype: str, spec_name: str | None) -> dict:
        spec, why = self.spec(spec_name)
        if spec is None:
            return {"roofline_error": why}
        try:
            from analyzers.roofline import roofline

            precision = self.precision_for(dtype) if spec_name != "cpu" else None
            return {"roofline_ms": sum(float(roofline(r, spec, precision=precision).floor_ms) for r in reps),
                    "roofline_estimate": spec.estimate}
        except Exception as e:
            return {"roofline_error": f"roofline: {row_error(e)}"}

    def remeasure_cpu(self) -> bool:
        """Measure this CPU's peaks again (the cache keeps the best figure ever seen) and bound
        every cost computed so far on the new spec; False when that is not possible."""
        try:
            from analyzers.roofline import get_spec

            self._specs["cpu"] = get_spec("cpu", refresh=True)
        except Exception:
            return False
        for ck, reps in self._reports.items():
            if ck[3] == "cpu":
                self._cache[ck].update(self._floor(reps, ck[2], "cpu"))
        return True

    def forget(self, key: int) -> None:
        self._counters = {k: v for k, v in self._counters.items() if k[0] != key}


class _Chain(torch.nn.Module):
    """Models run one after the other on the same input; their outputs side by side."""

    def __init__(self, modules: Sequence[torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)

    def forward(self, x):
        return tuple(m(x) for m in self.parts)


def chain(nets: Sequence[Net]) -> Net:
    """One profile entry that runs ``nets`` one after the other on the same input (a ``+`` on
    the command line). All need the same input shape."""
    nets = list(nets)
    if len(nets) == 1:
        return nets[0]
    shapes = {n.input_shape for n in nets}
    if len(shapes) != 1:
        listed = ", ".join(f"{n.source} {'x'.join(map(str, n.input_shape))}" for n in nets)
        raise SurgeryError(f"models joined by '+' run on the same input, but their input shapes differ: {listed}; "
                           "pass --input to give them one")
    return Net(_Chain([n.module for n in nets]), None, nets[0].input_shape, source="+".join(n.source for n in nets),
               format="chain", metadata={"chain": tuple(nets)})


def chain_parts(net: Net) -> tuple[Net, ...]:
    """The models of a chain entry (a plain model is a chain of one)."""
    return tuple(net.metadata.get("chain", (net,)))
