"""The counting engine: run a model on the ``meta`` device and attribute every aten op.

No real compute and no activation memory: the model is cloned structurally onto ``meta``
(parameters become shape-only tensors; the original is never touched), then an
``fx.Interpreter`` runs the layer graph of :func:`surgery.core.graph.layer_graph` node by node
inside a ``TorchDispatchMode`` that sees each aten op with its real shapes. Every op is
attributed to the layer whose node is running, to the innermost module that issued it,
and to the torch function that issued it (the latter lets the fvcore mirror recognise
``adaptive_avg_pool2d``). Nodes that are not layers (``getitem`` plumbing) hand their ops to
the next layer that runs.

If torch.fx cannot trace the model, the fallback runs the meta clone eagerly with forward
hooks on its leaf modules: each leaf module call is a layer (in execution order) and each
op outside any leaf module becomes its own functional layer. The report says so.

Layer-boundary bytes (the fused view of a layer, DESIGN.md "memory access cost"): a layer
reads each tensor it did not produce itself once — its input activations and the
parameters/buffers its ops use — and writes the outputs it returns. Intermediates inside a
layer (Darknet's conv → BN → leaky) are assumed to stay on chip. Per-op records keep each
op's own (unfused) traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from analyzers.formulas import FIRST_OUTPUT_ONLY, KNOWN, OVERWRITE, QUERIES, Formula, formula, is_view
from analyzers.shortcuts import shortcut
from surgery.core.errors import SurgeryError, first_line
from surgery.core.graph import Layer, LayerGraph, layer_graph, meta_copy


def _sid(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class OpRecord:
    """One aten call (mutable while counting; cost.py freezes it into an ``OpCost``)."""

    op: str
    fn: str
    module: str
    f: Formula
    params: int
    bytes_read: int
    bytes_written: int
    activations: int
    input_elements: int
    input_shapes: tuple
    output_shape: tuple


@dataclass
class LayerAcc:
    layer: Layer
    module: str  # module path the layer belongs to (its own module, or the parent of a function)
    ops: list = field(default_factory=list)
    produced: set = field(default_factory=set)  # storages written inside the layer
    reads: dict = field(default_factory=dict)  # view key -> (bytes, shape, is_state)
    params: set = field(default_factory=set)  # storage ids of parameters touched
    output_shapes: tuple = ()
    input_shapes: tuple = ()
    bytes_written: int = 0
    own_params: int = 0  # parameters first used by this layer (each parameter counted once per model)
    note: str = ""

    @property
    def bytes_read(self) -> int:
        return sum(b for b, _, _ in self.reads.values())


class Recorder:
    """Collects ``OpRecord``s into ``LayerAcc``s; driven by the two torch modes below."""

    def __init__(self, state: dict[int, tuple[str, int, bool]]):
        self.state = state  # storage id -> (name, numel, is_parameter) for every model tensor
        self.accs: list[LayerAcc] = []
        self.current: LayerAcc | None = None
        self.pending: LayerAcc | None = None
        self.fn = ""
        self.module_stack: list[str] = []
        self.node_module = ""
        self.synthetic = None  # hook mode: callback creating a layer for an op outside any leaf
        self.current_inputs = ()  # hook mode: the running leaf module's arguments

    # ------------------------------------------------------------------ layer boundaries
    def begin_layer(self, layer: Layer, module: str) -> None:
        acc = self.pending or LayerAcc(layer, module)
        acc.layer, acc.module = layer, module
        self.pending = None
        self.current = acc
        self.node_module = module
        self.accs.append(acc)

    def end_layer(self, out, inputs=()) -> None:
        acc = self.current
        self.current = None
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        seen = set()
        for t in outs:
            key = (_sid(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            if key not in seen and key[0] in acc.produced:
                seen.add(key)
                acc.bytes_written += _nbytes(t)
        acc.output_shapes = tuple(tuple(t.shape) for t in outs)
        # A layer's input shapes are those of the tensors it is called with, in argument order
        # (AlexNet's [connected] reads 256x6x6 and flattens it itself); the tensors its ops read
        # from outside the layer are the fallback where the call's arguments are unknown.
        ins = [t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor) and _sid(t) not in self.state]
        shapes = tuple(tuple(t.shape) for t in ins)
        if not shapes:
            shapes = tuple(shape for _, shape, is_state in acc.reads.values() if not is_state)
        acc.input_shapes = shapes

    def begin_plumbing(self, module: str) -> None:
        self.current = None
        self.node_module = module

    def finish(self) -> None:
        if self.pending is not None and self.pending.ops:
            if not self.accs:
                raise SurgeryError("the model ran no layer the counter could attribute ops to")
            last = self.accs[-1]
            last.ops.extend(self.pending.ops)
            last.note = "includes ops from after the last layer"
        self.pending = None

    # ------------------------------------------------------------------ one aten op
    def record(self, func, args, kwargs, out) -> None:
        f = formula(func, args, kwargs, out, self.fn)
        acc = self.current
        if acc is None:
            if self.synthetic is not None and f.cls != "view":
                acc = self.synthetic(func, self)
            else:
                if self.pending is None:
                    self.pending = LayerAcc(Layer(-1, "", "", "", "function"), self.node_module)
                acc = self.pending
        packet = func._overloadpacket
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if packet in FIRST_OUTPUT_ONLY:
            outs = outs[:1]
        view = f.cls == "view"
        reads = [] if view else (ins[1:] if packet in OVERWRITE else ins)
        params, op_read, seen = set(), 0, set()
        for t in reads:
            sid = _sid(t)
            key = (sid, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            if key in seen:
                continue
            seen.add(key)
            op_read += _nbytes(t)
            st = self.state.get(sid)
            if st is not None and st[2]:
                params.add(sid)
            if sid not in acc.produced and key not in acc.reads:
                acc.reads[key] = (_nbytes(t), tuple(t.shape), st is not None)
        written = 0 if view else sum(_nbytes(t) for t in outs)
        if not view:
            acc.produced.update(_sid(t) for t in outs)
        acc.params |= params
        module = self.module_stack[-1] if self.module_stack else self.node_module
        acc.ops.append(OpRecord(
            op=str(packet).replace("aten::", "aten.") if not str(packet).startswith("aten.") else str(packet),
            fn=self.fn, module=module, f=f, params=sum(self.state[s][1] for s in params),
            bytes_read=op_read, bytes_written=written, activations=0 if view else sum(t.numel() for t in outs),
            input_elements=sum(t.numel() for t in ins),
            input_shapes=tuple(tuple(t.shape) for t in ins), output_shape=tuple(outs[0].shape) if outs else (),
        ))
        if self.synthetic is not None and self.current is None and acc is not self.pending:
            self.end_synthetic(acc, out)

    def end_synthetic(self, acc: LayerAcc, out) -> None:
        self.current = acc
        self.end_layer(out)


class _FunctionMode(TorchFunctionMode):
    """Remembers which torch-level function issued the aten ops below it."""

    def __init__(self, rec: Recorder):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        prev = self.rec.fn
        if not prev:
            self.rec.fn = getattr(func, "__name__", str(func)).strip("_")
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.rec.fn = prev


class _DispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Never compiled, so no need for torch to wrap __torch_dispatch__ in dynamo.disable —
        # which would import torch._dynamo (1.5 s) on the first op of every process.
        return False

    def __init__(self, rec: Recorder):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in QUERIES:
            return func(*args, **kwargs)
        if func._overloadpacket not in KNOWN and not is_view(func):
            with self:  # a composite op without a formula: count what it decomposes into
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = shortcut(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        self.rec.record(func, args, kwargs, out)
        return out


class _Interpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, lg: LayerGraph, rec: Recorder, parents: dict[str, str]):
        super().__init__(gm, garbage_collect_values=True)
        self.extra_traceback = False  # a layer's SurgeryError stays one line (fx would append the node and a traceback)
        self.lg, self.rec, self.parents = lg, rec, parents

    def run_node(self, n: fx.Node):
        layer = self.lg.layer_of(n)
        if layer is None:
            if n.op in ("call_module", "call_function", "call_method"):
                self.rec.begin_plumbing(self.parents.get(n.name, ""))
            return super().run_node(n)
        module = layer.name if layer.kind == "module" else self.parents.get(n.name, "")
        self.rec.begin_layer(layer, module)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        out = super().run_node(n)
        self.rec.end_layer(out, (args, kwargs))
        return out


def _parent_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return path[0] if isinstance(path, tuple) else str(path)


def _state_map(model: nn.Module) -> dict[int, tuple[str, int, bool]]:
    state = {}
    for name, t in model.named_parameters(remove_duplicate=True):
        state.setdefault(_sid(t), (name, t.numel(), True))
    for name, t in model.named_buffers(remove_duplicate=True):
        state.setdefault(_sid(t), (name, t.numel(), False))
    for mod_name, sub in model.named_modules():
        for k, v in vars(sub).items():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                state.setdefault(_sid(v), (f"{mod_name}.{k}".strip("."), v.numel(), False))
    return state


def _install_module_stack(model: nn.Module, rec: Recorder) -> list:
    handles = []
    for name, sub in model.named_modules():
        if not name:
            continue

        def pre(_m, _a, _name=name):
            rec.module_stack.append(_name)

        def post(_m, _a, _o):
            if rec.module_stack:
                rec.module_stack.pop()

        handles.append(sub.register_forward_pre_hook(pre))
        handles.append(sub.register_forward_hook(post, always_call=True))
    return handles


@dataclass
class Prepared:
    """A model ready to count at any input shape: traced once, cloned to meta once."""

    model: nn.Module  # meta clone (a GraphModule in fx mode)
    lg: LayerGraph | None  # None: hook fallback
    parents: dict
    dtype: torch.dtype
    module_of_layer: dict = field(default_factory=dict)
    note: str = ""
    device: str = "meta"  # where run() executes the forward pass
    real: nn.Module | None = None  # the model itself (traced): counted on cpu when meta cannot run it


def prepare(module: nn.Module, dtype: torch.dtype | None = None) -> Prepared:
    own = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    if isinstance(module, torch.jit.ScriptModule):
        # Its code holds real tensors and cannot be deep-copied onto the meta device, so the
        # ops are counted by running it on CPU tensors at the given input (loading it already
        # needed --trust-code). Counted in its own dtype; one layer per ATen op.
        if dtype is not None and dtype != own:
            raise SurgeryError(f"a TorchScript module is counted by running it, in its own dtype "
                               f"({str(own).replace('torch.', '')}); drop --dtype")
        return Prepared(module, None, {}, own, device="cpu",
                        note="counted by running the TorchScript module on cpu at the given input "
                             "(TorchScript cannot be cloned onto the meta device); one layer per ATen op")
    if dtype is None:
        dtype = own
    try:
        lg = layer_graph(module)
    except SurgeryError as e:
        return Prepared(meta_copy(module, dtype), None, {}, dtype,
                        note=f"counted with module hooks (leaf modules in execution order): {e}", real=module)
    parents = {n.name: _parent_of(n) for n in lg.gm.graph.nodes}
    return Prepared(meta_copy(lg.gm, dtype), lg, parents, dtype, note="counted on the torch.fx layer graph",
                    real=lg.gm)


def _on_cpu(prep: Prepared, input_shape, batch: int, why: BaseException) -> bool:
    """Switch ``prep`` to counting on cpu, on a copy of the real model, when the meta device
    cannot run it (host-side shape arithmetic: ``.item()`` on a shape, an integer buffer read
    as data). False when there is nothing to fall back to."""
    import copy

    from surgery.core import safety

    if prep.device != "meta" or prep.real is None or isinstance(why, SurgeryError):
        return False
    safety.check_forward_memory(prep.real, tuple(input_shape), batch=batch, dtype=prep.dtype,
                                what="counting on cpu (the model cannot run on the meta device)")
    prep.model = copy.deepcopy(prep.real).to(prep.dtype).eval()
    prep.device = "cpu"
    prep.note = (f"{prep.note}; counted by running the model on cpu at the given input: it cannot run on the meta "
                 f"device ({type(why).__name__}: {first_line(why, 120)})")
    return True


def run(prep: Prepared, input_shape: tuple[int, ...], batch: int) -> tuple[list[LayerAcc], list[tuple]]:
    """Count one forward pass; returns the per-layer accumulators and the output shapes."""
    rec = Recorder(_state_map(prep.model))
    script = isinstance(prep.model, torch.jit.ScriptModule)  # no Python hooks on TorchScript
    handles = [] if script else _install_module_stack(prep.model, rec)
    if prep.device == "meta":
        x = torch.empty((batch, *input_shape), dtype=prep.dtype, device="meta")
    else:  # a real run: real (random) values
        x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0)).to(prep.dtype)
    try:
        with torch.no_grad(), _FunctionMode(rec), _DispatchMode(rec):
            if prep.lg is not None:
                out = _Interpreter(prep.model, prep.lg, rec, prep.parents).run(x)
            else:
                out = _run_hooks(prep.model, x, rec)
    except SurgeryError:
        raise
    except Exception as e:  # shape errors, ops without a meta kernel
        for h in handles:
            h.remove()
        handles = []
        if _on_cpu(prep, input_shape, batch, e):
            return run(prep, input_shape, batch)
        raise SurgeryError(
            f"cannot run the model on the {prep.device} device at input {'x'.join(map(str, input_shape))} "
            f"(batch {batch}): {type(e).__name__}: {first_line(e)}; check --input"
        ) from None
    finally:
        for h in handles:
            h.remove()
    rec.finish()
    _assign_params(prep.model, rec)
    return rec.accs, [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _assign_params(model: nn.Module, rec: Recorder) -> None:
    """Each parameter to the first layer that owns (module layers) or reads it."""
    assigned: set[int] = set()
    for acc in rec.accs:
        sids = set(acc.params)
        if acc.layer.kind == "module":
            try:
                sids |= {_sid(p) for p in model.get_submodule(acc.layer.name).parameters()}
            except AttributeError:
                pass
        new = sids - assigned
        assigned |= new
        acc.own_params = sum(rec.state[s][1] for s in new if s in rec.state and rec.state[s][2])


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out, skip = [], []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in skip):
            continue
        if getattr(m, "surgery_leaf", False) or not list(m.children()):
            out.append((name, m))
            skip.append(name)
    return out


def _run_hooks(model: nn.Module, x: torch.Tensor, rec: Recorder):
    depth = [0]
    handles = []

    def new_layer(name: str, type_: str, kind: str) -> Layer:
        return Layer(len(rec.accs), name, type_, name, kind)

    for name, m in ([] if isinstance(model, torch.jit.ScriptModule) else _leaves(model)):
        type_ = getattr(m, "section", None) or type(m).__name__

        def pre(_m, args, _name=name, _type=type_):
            if depth[0] == 0:
                rec.begin_layer(new_layer(_name, _type, "module"), _name)
                rec.current_inputs = args
            depth[0] += 1

        def post(_m, _args, out):
            depth[0] -= 1
            if depth[0] == 0:
                rec.end_layer(out, rec.current_inputs)

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))

    def synthetic(func, r: Recorder) -> LayerAcc:
        parent = r.module_stack[-1] if r.module_stack else ""
        fn = r.fn or str(func._overloadpacket).split("::")[-1].split(".")[-1]
        layer = new_layer(f"{parent}.{fn}".strip(".") if parent else fn, fn, "function")
        acc = LayerAcc(layer, parent)
        r.accs.append(acc)
        return acc

    rec.synthetic = synthetic
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()
