"""DiracNets (Zagoruyko & Komodakis 2017; weight-parameterizations thesis §5.3), training form.

Dirac parameterisation (thesis eq. 5.5)::

    W_hat = diag(a) I + diag(b) W_norm

``W_norm`` is ``W`` with each output filter divided by its L2 norm over (in, kh, kw); ``I`` is
the Dirac delta: 1 at ``[d, d, kh // 2, kw // 2]`` for ``d < min(in, out)`` (per group), else 0
-- exactly what ``torch.nn.init.dirac_`` writes. :func:`dirac_effective_weight` is that maths
as a pure function; :class:`DiracConv2d` is the module. It implements the fold protocol
(``reparameterize()``, ``reparameterize_problem()``, ``fuse_affine()``), so ``surgery fold``
folds it without importing this module.

Layout followed (stated so the parameter counts can be checked):

- Blocks are ``ReLU -> DiracConv2d(3x3, stride 1, pad 1, no bias) -> BatchNorm`` (thesis
  eq. 5.6, ``y = sigma((I + W) * x)``). ``a`` and ``b`` are per-output-channel vectors as in
  the thesis (the official code uses one scalar each). The official code's NCReLU
  (``cat[relu(x), -relu(-x)]``, doubling every conv's input channels) is *not* used: the
  thesis §5.3 does not have it and with it the published counts would double (DiracNet-28-10
  would be 72.8M, not 36.5M).
- Where pooling sits and which convs are plain follow ``szagoruyko/diracnets``
  ``diracnet.py`` (``define_diracnet``): the stem is a plain conv + BN (ImageNet: 7x7/2 conv,
  BN, 3x3/2 max-pool; CIFAR: 3x3 conv to 16k channels, BN); resolution drops by 2x2
  max-pooling *between* groups, never by a strided conv; the width change happens in the
  first Dirac conv of a group (``in != out``, the delta is the identity on the first
  ``min(in, out)`` channels). No 1x1 projections. A final ReLU precedes global average
  pooling and the linear classifier (the official folded export has it).
- ImageNet depths keep ResNet's blocks per group (thesis: "kept the same number of blocks per
  groups"): DiracNet-18 = 2x[2,2,2,2], DiracNet-34 = 2x[3,4,6,3] Dirac convs (the repository's
  ``{34: [3, 4, 6, 5]}`` would give 31M parameters, not the published 21.8M).
  CIFAR DiracNet-d-k: ``2N = 2 (d - 4) / 6`` convs per group, widths 16k/32k/64k.

Resulting counts: DiracNet-28-10 36,450,090 (published 36.5M); DiracNet-34 21,712,680
(published 21.8M); DiracNet-18 11,523,368 (published 11.7M, -1.4%: the thesis quotes
ResNet-18's 11.7M, "the same number of parameters", and the DiracNet lacks ResNet-18's
three 1x1 projection shortcuts, 172,032 weights).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from surgery.core.errors import SurgeryError
from zoo.registry import register


def dirac_delta_like(weight: Tensor, groups: int = 1) -> Tensor:
    """The Dirac delta ``I`` of ``weight``'s shape (out, in/groups, kh, kw), as ``dirac_`` makes it."""
    out_ch, in_per_group, kh, kw = weight.shape
    out_per_group = out_ch // groups
    n = min(out_per_group, in_per_group)
    delta = torch.zeros_like(weight)
    d = torch.arange(n, device=weight.device)
    rows = (torch.arange(groups, device=weight.device)[:, None] * out_per_group + d).reshape(-1)
    cols = d.repeat(groups)
    delta[rows, cols, kh // 2, kw // 2] = 1
    return delta


def dirac_effective_weight(weight: Tensor, alpha: Tensor, beta: Tensor, groups: int = 1,
                           eps: float = 1e-12) -> Tensor:
    """``diag(alpha) I + diag(beta) W_norm`` for a (out, in/groups, kh, kw) ``weight``.

    ``alpha``/``beta``: shape (out,) (or (1,), broadcast). ``W_norm`` divides each output filter
    by ``max(||W_o||_2, eps)`` over (in, kh, kw) (``F.normalize``). ``I`` is 1 at
    ``[d, d, kh//2, kw//2]`` for ``d < min(in, out)`` within each group.
    """
    if weight.dim() != 4:
        raise SurgeryError(f"dirac_effective_weight: expected a 4-d conv weight, got shape {tuple(weight.shape)}")
    out_ch = weight.shape[0]
    w_norm = F.normalize(weight.reshape(out_ch, -1), dim=1, eps=eps).view_as(weight)
    a = alpha.reshape(-1, 1, 1, 1)  # (out or 1, 1, 1, 1)
    b = beta.reshape(-1, 1, 1, 1)
    return a * dirac_delta_like(weight, groups) + b * w_norm


# torch.fx keeps the parameterisation as one call (its shape maths is not traceable), so a
# traced DiracNet shows ``dirac_effective_weight -> conv2d`` per Dirac conv.
torch.fx.wrap("dirac_effective_weight")


class DiracConv2d(nn.Module):
    """A 2-d convolution whose weight is Dirac-parameterised (training form).

    Parameters: ``weight`` (out, in/groups, kh, kw), ``alpha`` (out,), ``beta`` (out,), optional
    ``bias`` (out,). Exposes Conv2d's attributes (``in_channels``, ``out_channels``,
    ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``) so a fold can build the
    equivalent ``nn.Conv2d``. Init (thesis): ``W ~ N(0, 1)``, ``a = 1``, ``b = 0.1``.
    """

    # One layer of the layer table (and one unit of cost attribution), like nn.Conv2d.
    surgery_leaf = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1, dilation=1,
                 groups: int = 1, bias: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise SurgeryError(f"DiracConv2d: groups={groups} must divide in ({in_channels}) and out ({out_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.alpha = nn.Parameter(torch.empty(out_channels))
        self.beta = nn.Parameter(torch.empty(out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 1.0)
        nn.init.constant_(self.alpha, 1.0)
        nn.init.constant_(self.beta, 0.1)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def effective_weight(self) -> Tensor:
        return dirac_effective_weight(self.weight, self.alpha, self.beta, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    # ---- the fold protocol (surgery.fold discovers foldable modules by these methods)

    def reparameterize_problem(self) -> str | None:
        """Why the plain-conv form would not be exact, or None: the delta term is the identity on
        the feature map (the implicit skip connection) only for stride 1, odd kernels and "same"
        padding ``dilation * (k - 1) / 2`` (thesis §5.3)."""
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        if any(v != 1 for v in s):
            return f"stride {s} (only stride 1 folds exactly)"
        if any(v % 2 == 0 for v in k):
            return f"even kernel {k} (only odd kernels have a centre tap)"
        same = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
        if tuple(p) != same:
            return f"padding {tuple(p)} is not 'same' padding {same} for kernel {k}"
        return None

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """The ``nn.Conv2d`` holding ``W_hat`` (same dtype, device and bias): the same convolution
        with the same weight tensor as :meth:`forward` computes."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.copy_(self.effective_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        conv.weight.requires_grad_(self.weight.requires_grad)
        return conv

    @torch.no_grad()
    def fuse_affine(self, scale: Tensor, shift: Tensor) -> "DiracConv2d":
        """This conv followed by the per-channel ``y * scale + shift`` (an eval BatchNorm), as one
        Dirac conv: ``diag(s)(diag(a) I + diag(b) W_norm) = diag(sa) I + diag(sb) W_norm`` (``W_norm``
        unchanged, so the parameterisation survives); the bias becomes ``s * bias + shift``.
        ``scale``/``shift``: float64, shape (out,)."""
        import copy

        new = copy.deepcopy(self)
        dt = self.alpha.dtype
        new.alpha = nn.Parameter((self.alpha.double() * scale).to(dt))
        new.beta = nn.Parameter((self.beta.double() * scale).to(dt))
        bias = self.bias.double() if self.bias is not None else torch.zeros_like(scale)
        new.bias = nn.Parameter((bias * scale + shift).to(dt))
        return new

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}"


def dirac_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """ReLU -> DiracConv2d(3x3, same padding) -> BN: keys ``conv.*`` and ``bn.*``."""
    return nn.Sequential(OrderedDict(
        relu=nn.ReLU(),
        conv=DiracConv2d(in_ch, out_ch, 3, stride=1, padding=1),
        bn=nn.BatchNorm2d(out_ch),
    ))


def dirac_group(in_ch: int, out_ch: int, count: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        (f"block{i}", dirac_block(in_ch if i == 0 else out_ch, out_ch)) for i in range(count)))


class DiracNet(nn.Module):
    """Plain DiracNet: ``conv, bn, [pool0], group0, pool1, group1, ..., relu, avgpool, fc``."""

    def __init__(self, widths: list[int], convs_per_group: list[int], num_classes: int, imagenet: bool):
        super().__init__()
        self.imagenet = imagenet
        if imagenet:
            self.conv = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.pool0 = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        prev = widths[0]
        for i, (w, n) in enumerate(zip(widths, convs_per_group)):
            if i > 0:
                setattr(self, f"pool{i}", nn.MaxPool2d(2))
            setattr(self, f"group{i}", dirac_group(prev, w, n))
            prev = w
        self.num_groups = len(widths)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.bn(self.conv(x)))  # ImageNet: (w0, H/4, W/4); CIFAR: (w0, H, W)
        for i in range(self.num_groups):
            if i > 0:
                x = getattr(self, f"pool{i}")(x)
            x = getattr(self, f"group{i}")(x)
        x = torch.flatten(self.avgpool(self.relu(x)), 1)
        return self.fc(x)


def _check_classes(name: str, num_classes: int) -> None:
    if num_classes < 1:
        raise SurgeryError(f"zoo:{name}: num_classes={num_classes} must be at least 1")


def _imagenet(name: str, blocks: list[int], num_classes: int) -> DiracNet:
    _check_classes(name, num_classes)
    return DiracNet([64, 128, 256, 512], [2 * b for b in blocks], num_classes, imagenet=True)


@register("diracnet18", family="diracnet", input_shape=(3, 224, 224),
          description="DiracNet-18, plain Dirac-parameterised net, ImageNet 3x224x224 (training form)",
          published_params=11_700_000, params_rtol=0.02,
          source="weight-parameterizations thesis, Table 5.11 (11.7M = ResNet-18's count)")
def diracnet18(num_classes: int = 1000) -> DiracNet:
    """DiracNet-18 (ImageNet)."""
    return _imagenet("diracnet18", [2, 2, 2, 2], num_classes)


@register("diracnet34", family="diracnet", input_shape=(3, 224, 224),
          description="DiracNet-34, plain Dirac-parameterised net, ImageNet 3x224x224 (training form)",
          published_params=21_800_000, params_rtol=0.01,
          source="weight-parameterizations thesis, Table 5.11")
def diracnet34(num_classes: int = 1000) -> DiracNet:
    """DiracNet-34 (ImageNet)."""
    return _imagenet("diracnet34", [3, 4, 6, 3], num_classes)


@register("diracnet28_10", family="diracnet", input_shape=(3, 32, 32),
          description="DiracNet-28-10, plain Dirac-parameterised net, CIFAR 3x32x32 (training form)",
          published_params=36_500_000, params_rtol=0.01,
          source="weight-parameterizations thesis, Table 5.10")
def diracnet28_10(num_classes: int = 10) -> DiracNet:
    """DiracNet-28-10 (CIFAR)."""
    _check_classes("diracnet28_10", num_classes)
    depth, k = 28, 10
    n = (depth - 4) // 6  # 4 -> 2N = 8 Dirac convs per group
    return DiracNet([16 * k, 32 * k, 64 * k], [2 * n] * 3, num_classes, imagenet=False)
