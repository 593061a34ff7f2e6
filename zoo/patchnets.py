"""Patch-comparison nets (Zagoruyko & Komodakis 2015; weight-parameterizations thesis §3.3) and
the monolithic OnionNet baselines P_M, D_M, R_M (Simonovsky & Komodakis, BMVC 2016, Table 1).

Notation of the sources: ``C(n, k, s)`` = conv with n filters k x k, stride s, then ReLU;
``P(k, s)`` = max-pool; ``F(n)`` = fully connected; OnionNet's ``Cs(n)`` = conv with n filters
s x s, and there "fully connected layers are implemented as convolutions".

Layouts (every conv sits in a ``features`` Sequential, so ``features.N`` names each layer for
a cascade split; the patch nets' F layers are ``classifier.N`` Linears):

- ``patch_2ch`` (thesis Table 3.1 (v), 2x64x64): C(96,7,3)-P(2,2)-C(192,5,1)-P(2,2)-C(256,3,1)
  -C(256,1,1)-F(1). Maps: 64 -> 20 -> 10 -> 6 -> 3 -> 1 -> 1.
- ``patch_siamese`` (Table 3.2 (i)): two weight-shared branches C(96,7,3)-P(2,2)-C(192,5,1)
  -P(2,2)-C(256,3,1) on 1x64x64 patches, outputs (256 each) concatenated, then F(512)-ReLU-F(1).
  It takes one 2x64x64 tensor and splits the channels (patch 1 = channel 0).
- ``patch_pseudo_siamese`` (Table 3.2 (iii)): the same with unshared branches ``features1``/``features2``.
- ``onion_pm`` = P_M, "2ch-deep" (Table 1; thesis Table 3.1 (iii)), 2x64x64:
  C4(96)/3, 3xC3(96), P(2,2), 3xC3(192), C2(1). Unpadded convs: 64 -> 21 -> 19 -> 17 -> 15
  -> pool (ceil mode, as the official ``2chdeep.lua``) 8 -> 6 -> 4 -> 2 -> C2 -> 1. (The
  repository's Lua file adds a hidden F(768); Table 1 and the thesis have none.)
- ``onion_dm`` = D_M, Fast R-CNN's "small" CaffeNet/AlexNet classifier, 3x227x227 (one proposal
  warped to the CaffeNet crop; RoI pooling to 6x6 becomes pool5): conv1 11x11/4, ReLU, pool 3/2,
  LRN; conv2 5x5 pad 2 (2 groups), ReLU, pool, LRN; conv3 3x3 384; conv4 3x3 384 (2 groups);
  conv5 3x3 256 (2 groups); pool 3/2 -> 6x6; fc6 = C6(4096), fc7 = C1(4096), cls = C1(21),
  dropout after fc6/fc7. No bounding-box regressor (OnionNet omits it). ``groups=1`` drops
  AlexNet's two-GPU filter groups.
- ``onion_rm`` = R_M, CNN-F of Chatfield et al. 2014, 3x224x224: conv1 64 11x11/4, ReLU, LRN,
  pool 3/2; conv2 256 5x5 pad 2, ReLU, LRN, pool; 3x conv 256 3x3 pad 1; pool -> 6x6;
  C6(4096), C1(4096), C1(1000). Pools in ceil mode (MatConvNet's [0 1 0 1] padding):
  224 -> 54 -> 27 -> 13 -> 6. Table 1 prints the last layer as C1(4096); its ILSVRC
  classifier has 1000 outputs (Table 5: C1(-/1000)).

No parameter counts are published for these nets; tests/test_zoo.py derives them in closed
form from the layer lists above.

**Initialisation.** The OnionNet nets (P_M, D_M, R_M and their cascades, zoo/onion.py) start
from He-normal conv weights and zero biases (He et al. 2015, for ReLU chains), as the OnionNet
code's Caffe/Torch7 models were trained from. PyTorch's default conv init (variance
1/(3·fan_in)) loses a factor ~√6 of the signal per conv + ReLU: P_M's nine convs output ~1e-3
on unit inputs, and SGD on the hinge loss stayed at loss 1.0 for 30 steps at lr 0.1 and 0.01
(docs/BENCHMARKS.md, onion Table 2) — the zoo's defaults must train as the paper's recipe says.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.registry import register

_PATCH = (2, 64, 64)


def _branch(in_ch: int) -> list[nn.Module]:
    """C(96,7,3)-P(2,2)-C(192,5,1)-P(2,2)-C(256,3,1): 64x64 -> 256x1x1."""
    return [
        nn.Conv2d(in_ch, 96, 7, stride=3), nn.ReLU(),  # 20x20
        nn.MaxPool2d(2, 2),  # 10x10
        nn.Conv2d(96, 192, 5), nn.ReLU(),  # 6x6
        nn.MaxPool2d(2, 2),  # 3x3
        nn.Conv2d(192, 256, 3), nn.ReLU(),  # 1x1
    ]


class Patch2ch(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_branch(2), nn.Conv2d(256, 256, 1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(256, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))  # (N, 1)


class PatchSiamese(nn.Module):
    """Branches applied to channel 0 and channel 1 of a (N, 2, 64, 64) pair."""

    def __init__(self, shared: bool):
        super().__init__()
        self.shared = shared
        if shared:
            self.features = nn.Sequential(*_branch(1))
        else:
            self.features1 = nn.Sequential(*_branch(1))
            self.features2 = nn.Sequential(*_branch(1))
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1))

    def forward(self, x: Tensor) -> Tensor:
        p1, p2 = x[:, 0:1], x[:, 1:2]  # (N, 1, 64, 64) each
        if self.shared:
            d1, d2 = self.features(p1), self.features(p2)
        else:
            d1, d2 = self.features1(p1), self.features2(p2)
        d = torch.cat((d1.flatten(1), d2.flatten(1)), dim=1)  # (N, 512): the two 256-d descriptors
        return self.classifier(d)


def he_normal_(module: nn.Module) -> nn.Module:
    """He-normal (fan-in, ReLU gain) conv weights and zero biases, in place (module doc)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class ConvCascadeNet(nn.Module):
    """Every parametric layer is a conv in ``features``; output (N, C) after flattening 1x1 maps.
    Conv weights start He-normal (:func:`he_normal_`)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.features = he_normal_(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)


@register("patch_2ch", family="patchnet", input_shape=_PATCH,
          description="2-channel patch-comparison net (2x64x64 pair -> 1 score)",
          source="weight-parameterizations thesis §3.3, Table 3.1 (v); no count published")
def patch_2ch() -> Patch2ch:
    """2ch patch net."""
    return Patch2ch()


@register("patch_siamese", family="patchnet", input_shape=_PATCH,
          description="siamese patch net: shared branch per 1x64x64 patch (input 2x64x64), F(512)-ReLU-F(1)",
          source="weight-parameterizations thesis §3.3, Table 3.2 (i); no count published")
def patch_siamese() -> PatchSiamese:
    """Siamese patch net."""
    return PatchSiamese(shared=True)


@register("patch_pseudo_siamese", family="patchnet", input_shape=_PATCH,
          description="pseudo-siamese patch net: unshared branches per 1x64x64 patch (input 2x64x64)",
          source="weight-parameterizations thesis §3.3, Table 3.2 (iii); no count published")
def patch_pseudo_siamese() -> PatchSiamese:
    """Pseudo-siamese patch net."""
    return PatchSiamese(shared=False)


@register("onion_pm", family="onionnet", input_shape=_PATCH,
          description="OnionNet baseline P_M: 2ch-deep patch net, 2x64x64 -> 1 score",
          source="onionnet-bmvc2016 Table 1; layout thesis Table 3.1 (iii); no count published")
def onion_pm() -> ConvCascadeNet:
    """P_M (2ch-deep)."""
    def c(i: int, o: int, k: int, s: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, k, stride=s), nn.ReLU()]

    return ConvCascadeNet([
        *c(2, 96, 4, 3),  # 21x21
        *c(96, 96, 3), *c(96, 96, 3), *c(96, 96, 3),  # 15x15
        nn.MaxPool2d(2, 2, ceil_mode=True),  # 8x8
        *c(96, 192, 3), *c(192, 192, 3), *c(192, 192, 3),  # 2x2
        nn.Conv2d(192, 1, 2),  # C2(1): the F(1) decision layer as a conv -> 1x1
    ])


@register("onion_dm", family="onionnet", input_shape=(3, 227, 227),
          description="OnionNet baseline D_M: Fast R-CNN 'small' CaffeNet classifier (FC as conv), 3x227x227",
          source="onionnet-bmvc2016 Table 1; CaffeNet layout (Krizhevsky et al. 2012); no count published")
def onion_dm(num_classes: int = 21, groups: int = 2) -> ConvCascadeNet:
    """D_M (CaffeNet / Fast R-CNN model S)."""
    if groups not in (1, 2):
        raise SurgeryError(f"zoo:onion_dm: groups={groups}; use groups=2 (CaffeNet) or groups=1 (no filter groups)")
    if num_classes < 1:
        raise SurgeryError(f"zoo:onion_dm: num_classes={num_classes} must be at least 1")
    return ConvCascadeNet([
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(),  # 55x55
        nn.MaxPool2d(3, 2),  # 27x27
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
        nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(),
        nn.MaxPool2d(3, 2),  # 13x13
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(),
        nn.MaxPool2d(3, 2),  # 6x6 (stands for RoI pooling)
        nn.Conv2d(256, 4096, 6), nn.ReLU(), nn.Dropout(0.5),  # fc6 -> 1x1
        nn.Conv2d(4096, 4096, 1), nn.ReLU(), nn.Dropout(0.5),  # fc7
        nn.Conv2d(4096, num_classes, 1),  # cls_score (20 VOC classes + background)
    ])


@register("onion_rm", family="onionnet", input_shape=(3, 224, 224),
          description="OnionNet baseline R_M: CNN-F (Chatfield et al. 2014) with FC as conv, 3x224x224",
          source="onionnet-bmvc2016 Table 1; CNN-F layout (Chatfield et al. 2014); no count published")
def onion_rm(num_classes: int = 1000) -> ConvCascadeNet:
    """R_M (CNN-F)."""
    if num_classes < 1:
        raise SurgeryError(f"zoo:onion_rm: num_classes={num_classes} must be at least 1")
    return ConvCascadeNet([
        nn.Conv2d(3, 64, 11, stride=4), nn.ReLU(),  # 54x54
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
        nn.MaxPool2d(3, 2, ceil_mode=True),  # 27x27
        nn.Conv2d(64, 256, 5, padding=2), nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
        nn.MaxPool2d(3, 2, ceil_mode=True),  # 13x13
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),  # 6x6
        nn.Conv2d(256, 4096, 6), nn.ReLU(), nn.Dropout(0.5),  # full6 -> 1x1
        nn.Conv2d(4096, 4096, 1), nn.ReLU(), nn.Dropout(0.5),  # full7
        nn.Conv2d(4096, num_classes, 1),  # full8
    ])
