"""A small CNN for the bundled digits (the healing story: train, regroup, heal).

``digits_cnn``: 1x32x32 input, five 3x3 convs (groups=1, no bias) each followed by BatchNorm
and ReLU, widths w, 2w, 2w, 4w, 4w with stride 2 at the second and fourth (spatial 32, 16,
16, 8, 8), global average pooling and a linear classifier. The 3x3 convs are ungrouped so
``surgery regroup --root N`` applies to them.

Parameters (closed form, w = width, K = classes): 9·(1·w + w·2w + 2w·2w + 2w·4w + 4w·4w)
conv weights + 2·(w + 2w + 2w + 4w + 4w) BatchNorm affine + 4w·K + K classifier
= 70,330 for w = 16, K = 10.
"""

from __future__ import annotations

from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.registry import register


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        widths = (width, 2 * width, 2 * width, 4 * width, 4 * width)
        strides = (1, 2, 1, 2, 1)
        layers, prev = [], in_channels
        for i, (w, s) in enumerate(zip(widths, strides)):
            layers += [(f"conv{i}", nn.Conv2d(prev, w, 3, stride=s, padding=1, bias=False)),
                       (f"bn{i}", nn.BatchNorm2d(w)), (f"relu{i}", nn.ReLU())]
            prev = w
        self.features = nn.Sequential()
        for name, m in layers:
            self.features.add_module(name, m)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (4w, 8, 8) for a 32x32 input
        return self.fc(self.flatten(self.pool(x)))  # (K,)


@register("digits_cnn", family="digits", input_shape=lambda kw: (kw["in_channels"], 32, 32),
          description="small 5-conv CNN for the bundled 8x8 digits (`surgery data digits`), 1x32x32",
          published_params=70_330, params_rtol=0.0,
          source="closed form in zoo/digits.py's docstring (width=16, 10 classes)")
def digits_cnn(width: int = 16, num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    """Small CNN for the bundled digits."""
    if width < 1 or num_classes < 1 or in_channels < 1:
        raise SurgeryError(f"zoo:digits_cnn: width={width}, num_classes={num_classes}, in_channels={in_channels} "
                           "must all be positive integers")
    return DigitsCNN(width, num_classes, in_channels)
