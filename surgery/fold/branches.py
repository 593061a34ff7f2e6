"""The branch fold (kind ``branches``): parallel linear branches that read the same tensor and are summed become
one conv -- the Dirac fold's idea applied to explicit skip connections.

A sum ``conv_a(x) + conv_b(x) + bn(x) + x`` (any tree of ``+``/``torch.add``/``.add``, any
order, other terms allowed) is one convolution: each conv kernel zero-padded and centred to
the largest kernel, an eval BatchNorm on ``x`` is ``diag(scale)`` times a Dirac delta plus a
bias, the identity ``x`` is a Dirac delta; biases are summed. Exact (up to rounding) when the
branches' outputs align: odd kernels, no dilation, zero padding, equal stride, groups and
channels, and equal offset ``(k - 1) / 2 - padding`` (for a branch with an identity or a
BatchNorm: stride 1 and "same" padding). Anything else is skipped with the reason.
"""

from __future__ import annotations

import operator
import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery.fold.bn import bn_scale_shift
from surgery.fold.context import FoldContext
from surgery.fold.registry import register

Branch = nn.Module | None  # nn.Conv2d, nn.BatchNorm2d (eval), or None for the identity


# ------------------------------------------------------------------ pure maths


def conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Numeric padding of ``conv`` (resolves ``"same"``/``"valid"``), or None if not symmetric."""
    p = conv.padding
    if p == "valid":
        return (0, 0)
    if p == "same":
        if any(k % 2 == 0 for k in conv.kernel_size):
            return None
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(int(v) for v in p)


def branch_offset(b: Branch) -> tuple[int, int]:
    """Where output pixel (0, 0) centres its window: ``(k - 1) / 2 - padding`` per dim."""
    if not isinstance(b, nn.Conv2d):
        return (0, 0)
    p = conv_padding(b)
    return tuple((k - 1) // 2 - pp for k, pp in zip(b.kernel_size, p))


def branch_problem(branches: list[Branch]) -> str | None:
    """Why the branches cannot be summed into one conv (structure only), or None."""
    convs = [b for b in branches if isinstance(b, nn.Conv2d)]
    if not convs:
        return "no conv among the branches"
    ref = convs[0]
    for c in convs:
        if c.padding_mode != "zeros":
            return f"padding_mode={c.padding_mode!r} (only zero padding)"
        if c.dilation != (1, 1):
            return f"dilation {c.dilation}"
        if any(k % 2 == 0 for k in c.kernel_size):
            return f"even kernel {c.kernel_size}"
        if conv_padding(c) is None:
            return "padding='same' with an even kernel"
        if c.groups != ref.groups:
            return f"different groups ({ref.groups} and {c.groups})"
        if c.stride != ref.stride:
            return f"different strides ({ref.stride} and {c.stride})"
        if (c.in_channels, c.out_channels) != (ref.in_channels, ref.out_channels):
            return (f"different channels ({ref.in_channels}->{ref.out_channels} and "
                    f"{c.in_channels}->{c.out_channels})")
        if c.weight.dtype != ref.weight.dtype:
            return "different dtypes"
    others = [b for b in branches if not isinstance(b, nn.Conv2d)]
    if others:
        if ref.stride != (1, 1):
            return f"an identity/BatchNorm branch beside a stride-{ref.stride} conv"
        if ref.in_channels != ref.out_channels:
            return f"an identity/BatchNorm branch beside a {ref.in_channels}->{ref.out_channels}-channel conv"
        for b in others:
            if b is not None and (b.running_mean is None or b.num_features != ref.out_channels):
                return f"a BatchNorm branch without running statistics or with {b.num_features} features"
    offsets = {branch_offset(b) for b in branches}
    if len(offsets) > 1:
        return "branch windows are not aligned (padding is not 'same'-consistent across kernel sizes)"
    return None


def pad_kernel(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad an odd (out, in, kh, kw) kernel to ``size``, keeping it centred."""
    ph, pw = (size[0] - weight.shape[2]) // 2, (size[1] - weight.shape[3]) // 2
    return F.pad(weight, (pw, pw, ph, ph))


def merge_branches(branches: list[Branch]) -> nn.Conv2d:
    """One ``nn.Conv2d`` computing the sum of ``branches`` (check :func:`branch_problem` first).

    Accumulates in float64 and casts to the convs' dtype.
    """
    convs = [b for b in branches if isinstance(b, nn.Conv2d)]
    ref = convs[0]
    size = tuple(max(c.kernel_size[d] for c in convs) for d in range(2))
    offset = branch_offset(ref)
    padding = tuple((size[d] - 1) // 2 - offset[d] for d in range(2))
    cin, cout, groups = ref.in_channels, ref.out_channels, ref.groups
    dev = ref.weight.device
    weight = torch.zeros(cout, cin // groups, *size, dtype=torch.float64, device=dev)  # (out, in/groups, kh, kw)
    bias = torch.zeros(cout, dtype=torch.float64, device=dev)
    delta = torch.nn.init.dirac_(torch.empty_like(weight), groups)  # the identity, per group
    for b in branches:
        if isinstance(b, nn.Conv2d):
            weight += pad_kernel(b.weight.detach().double(), size)
            if b.bias is not None:
                bias += b.bias.detach().double()
        elif b is None:
            weight += delta
        else:
            scale, shift = bn_scale_shift(b)
            weight += scale.view(-1, 1, 1, 1) * delta
            bias += shift
    has_bias = any(c.bias is not None for c in convs) or any(b is not None and not isinstance(b, nn.Conv2d)
                                                            for b in branches)
    conv = nn.Conv2d(cin, cout, size, stride=ref.stride, padding=padding, groups=groups, bias=has_bias,
                     device=dev, dtype=ref.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if has_bias:
            conv.bias.copy_(bias)
    return conv


# ------------------------------------------------------------------ graph pass


def _is_add(node) -> bool:
    if not isinstance(node, fx.Node) or node.kwargs or len(node.args) != 2:
        return False
    if not all(isinstance(a, fx.Node) for a in node.args):
        return False
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
        node.op == "call_method" and node.target == "add")


def _inner(node: fx.Node) -> bool:
    """An add whose only user is another add: part of that add's sum tree."""
    return len(node.users) == 1 and _is_add(next(iter(node.users)))


def _sum_tree(root: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """(terms in order, add nodes root first) of the sum rooted at ``root``."""
    terms, adds = [], [root]

    def walk(n: fx.Node) -> None:
        for a in n.args:
            if _is_add(a) and len(a.users) == 1:
                adds.append(a)
                walk(a)
            else:
                terms.append(a)

    walk(root)
    return terms, adds


def _branch_of(ctx: FoldContext, term: fx.Node):
    """(input node, branch module) for a conv/BN term, or (term, None) for a possible identity."""
    m = ctx.module(term)
    if type(m) in (nn.Conv2d, nn.BatchNorm2d) and len(term.args) == 1 and not term.kwargs \
            and isinstance(term.args[0], fx.Node):
        return term.args[0], m
    return term, None


@register("branches", order=3, summary="parallel conv/BN/identity branches summed into one conv")
def run(ctx: FoldContext, kinds: tuple[str, ...]) -> None:
    roots = [n for n in ctx.graph.nodes if _is_add(n) and not _inner(n)]
    for root in roots:
        _fold_sum(ctx, root)
    ctx.commit()


def _fold_sum(ctx: FoldContext, root: fx.Node) -> None:
    terms, adds = _sum_tree(root)
    add_set = set(adds)
    info = [_branch_of(ctx, t) for t in terms]
    inputs = []  # inputs read by at least one conv term, in order
    for t, (src, m) in zip(terms, info):
        if isinstance(m, nn.Conv2d) and src not in inputs:
            inputs.append(src)
    replaced: dict[int, fx.Node | None] = {}  # term position -> new node (None: drop)
    for x in inputs:
        # position -> branch (None: the identity x itself); a term already folded stays out
        group = {i: (None if t is x else m) for i, (t, (src, m)) in enumerate(zip(terms, info))
                 if i not in replaced and (t is x or (m is not None and src is x))}
        if len(group) < 2:
            continue
        pos = list(group)
        members = [terms[i] for i in pos]
        branches = [group[i] for i in pos]
        convs = [terms[i] for i in pos if isinstance(group[i], nn.Conv2d)]
        if not convs:
            continue
        first = min(convs, key=_order(ctx))
        names = [f"identity {t.name}" if group[i] is None else str(t.target) for i, t in zip(pos, members)]
        problem = branch_problem(branches)
        if problem is None:
            outside = [u.name for i, t in zip(pos, members) if group[i] is not None
                       for u in t.users if u not in add_set]
            if outside:
                problem = f"a branch output also feeds {', '.join(sorted(set(outside)))}"
        if problem is None and any(ctx.references(str(t.target)) > 1 for i, t in zip(pos, members)
                                   if group[i] is not None):
            problem = "a branch module is called more than once (shared weights)"
        if problem:
            ctx.skip("branches", str(first.target), f"sum {root.name} of {', '.join(names)}: {problem}")
            continue
        ctx.replace_module(str(first.target), merge_branches(branches))
        ctx.note(first, kind="branches", merged=names)
        merged = [n for i, t, n in zip(pos, members, names) if t is not first and group[i] is not None]
        ctx.done("branches", str(first.target), merged, f"sum {root.name}: " + " + ".join(names))
        for i in pos:
            replaced[i] = first if i == pos[0] else None
    if not replaced:
        return
    new_terms = [replaced.get(i, t) for i, t in enumerate(terms)]
    new_terms = [t for t in new_terms if t is not None]
    acc = new_terms[0]
    with ctx.graph.inserting_before(root):
        for t in new_terms[1:]:
            acc = ctx.graph.call_function(operator.add, (acc, t))
    root.replace_all_uses_with(acc)
    for a in dict.fromkeys(adds):  # root first: each add is used only by the one erased before it
        ctx.graph.erase_node(a)
    dropped = [t for i, t in enumerate(terms) if i in replaced and replaced[i] is None]
    for t in dict.fromkeys(dropped):  # conv/BN branches now unused (an identity input keeps its users)
        if t.op == "call_module" and not t.users:
            ctx.remove_node(t)


def _order(ctx: FoldContext):
    index = {n: i for i, n in enumerate(ctx.graph.nodes)}
    return lambda n: index[n]
