"""pjreddie's normalising sections: ``[normalization]``/``[lrn]`` (local response
normalisation across channels), ``[l2norm]`` (unit L2 norm over channels) and ``[batchnorm]``
(a BatchNorm on its own). Shape-preserving; the forward is Darknet's at inference."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from zoo.darknet.cfg import BN_EPS, BN_MOMENTUM
from zoo.darknet.layers import DarknetLayer, Ctx, PassLayer


class NormalizationLayer(PassLayer):
    """normalization_layer.c ``forward_normalization_layer``: ``out = x * norms^-beta`` with
    ``norms[k] = kappa + alpha * S[k]`` -- alpha is *not* divided by size (torch's
    LocalResponseNorm divides it).

    S[k] is what Darknet's running window sums: it starts from channels ``0..size/2-1`` (not
    ``0..size/2``) and then, channel by channel, adds channel ``k + size/2`` and drops channel
    ``k - (size-1)/2 - 1``. Channel ``m = size/2`` is therefore never added but still dropped
    once the window has passed it, so for every k (when m < C)
    ``S[k] = sum(x[j]^2 for j in [k-(size-1)/2, k+size/2] within 0..C-1) - x[m]^2``,
    which is what we compute (the squares of the true window minus channel m's). With the usual
    kappa=1 and a tiny alpha the missing channel barely matters; the result is Darknet's either
    way, NaN included where a norm ends up negative."""

    section = "normalization"

    def __init__(self, ctx: Ctx):
        ctx.need_image()  # Darknet's layer is empty after a layer without C x H x W
        super().__init__(ctx)
        c = self.in_shape[0]
        self.alpha, self.beta = ctx.float("alpha", 0.0001), ctx.float("beta", 0.75)
        self.kappa, self.size = ctx.float("kappa", 1.0), ctx.int("size", 5)
        ctx.positive(size=self.size)
        if self.size // 2 > c:  # the first window reads channels 0..size/2-1
            raise ctx.error(f"size={self.size} reads channels 0..{self.size // 2 - 1} but the input has {c}; "
                            f"Darknet would read past the layer (use size <= {2 * c + 1})")

    def forward(self, x):
        c, s = x.shape[1], self.size
        sq = x * x
        lo, hi = (s - 1) // 2, s // 2  # window [k - lo, k + hi]
        window = F.pad(sq, (0, 0, 0, 0, lo, hi)).unfold(1, s, 1).sum(-1)  # (B, C, H, W): zero-padded sums
        if hi < c:
            window = window - sq[:, hi:hi + 1]  # channel size/2: never added, dropped once passed
        return x * (self.kappa + self.alpha * window).pow(-self.beta)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, kappa={self.kappa:g}"


class L2normLayer(PassLayer):
    """blas.c ``l2normalize_cpu``: each position's channel vector divided by its L2 norm (no
    epsilon: an all-zero vector gives NaN, as Darknet's CPU path does; its GPU kernel
    ``l2norm_kernel`` treats a zero norm as 1 and gives 0)."""

    section = "l2norm"

    def __init__(self, ctx: Ctx):
        ctx.need_image()  # after a layer without C x H x W Darknet normalises over 0 channels: a no-op
        super().__init__(ctx)

    def forward(self, x):
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class BatchnormLayer(PassLayer):
    """batchnorm_layer.c at inference: ``scales * (x - rolling_mean) / sqrt(rolling_variance) +
    biases`` per channel (with this builder's eps, :data:`zoo.darknet.cfg.BN_EPS`).

    ``load_batchnorm_weights``/``save_batchnorm_weights`` carry scales, rolling mean and rolling
    variance only, so the biases are the zeros make_batchnorm_layer allocates: the bias here is
    frozen at 0 (Darknet never updates a [batchnorm] layer's biases or scales either: the layer
    has no update function). The module is ``norm``, not ``bn``: this is no batch_normalize=1
    layer and a fold has nothing to fold it into."""

    section = "batchnorm"

    def __init__(self, ctx: Ctx):
        ctx.need_image()  # after a layer without C x H x W Darknet's [batchnorm] has 0 channels
        super().__init__(ctx)
        c = self.in_shape[0]
        self.norm = nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.norm.bias.requires_grad_(False)

    def forward(self, x):
        return self.norm(x)


NORM_LAYERS: dict[str, type[DarknetLayer]] = {
    cls.section: cls for cls in (NormalizationLayer, L2normLayer, BatchnormLayer)
}
