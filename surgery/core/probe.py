"""The inputs a command judges a model on, and where they came from.

A *probe* is a short list of input batches: by default seeded random normal tensors (enough to
check that a function-preserving surgery reproduced its input to float rounding), or real
images from a folder (``--data DIR``, :func:`surgery.evaluate.image_probe`) — what a lossy
surgery must be judged on, since random inputs say nothing about a trained classifier (a
regrouped digits net agrees with its teacher on 88% of random inputs and 9% of digits).

Every report that measured on a probe names it (:meth:`Probe.describe`, ``"probe"`` in the
JSON): ``probe: 64 images from digits/val`` or ``probe: random normal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RANDOM = "random"
IMAGES = "images"


@dataclass(frozen=True)
class Probe:
    batches: tuple[torch.Tensor, ...]  # each (B, *input_shape), float32
    kind: str  # RANDOM | IMAGES
    source: str  # "random normal" | "64 images from DIR"
    data: str | None = None  # the folder the images came from

    @property
    def images(self) -> int:
        """Samples over every batch."""
        return sum(int(b.shape[0]) for b in self.batches)

    @property
    def batch(self) -> int:
        return int(self.batches[0].shape[0]) if self.batches else 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.batches[0].shape[1:]) if self.batches else ()

    def describe(self) -> str:
        return f"probe: {self.source}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "source": self.source, "images": self.images, "data": self.data}

    def tensors(self, dtype: torch.dtype = torch.float32, unit: int = 1) -> list[torch.Tensor]:
        """The batches in ``dtype``, each cut to a multiple of ``unit`` rows (a recurrent
        Darknet net takes whole sequences); batches left empty are dropped."""
        out = []
        for b in self.batches:
            n = b.shape[0] - b.shape[0] % unit
            if n:
                out.append(b[:n].to(dtype))
        return out

    def rebatch(self, batch: int) -> "Probe":
        """The same samples in batches of exactly ``batch`` (a graph with a fixed batch size): the
        last partial batch is dropped, and too few samples are repeated to fill one."""
        x = torch.cat(self.batches)
        if x.shape[0] < batch:
            x = x.repeat((-(-batch // x.shape[0]),) + (1,) * (x.dim() - 1))
        n = x.shape[0] - x.shape[0] % batch
        source = f"{n} images from {self.data}" if self.kind == IMAGES and self.data else self.source
        return Probe(tuple(x[:n].split(batch)), self.kind, source, self.data)

    def take(self, n: int) -> torch.Tensor:
        """The first ``n`` samples as one batch."""
        return torch.cat(self.batches)[:n]


def random_probe(input_shape, *, probes: int = 2, batch: int = 2, seed: int = 0) -> Probe:
    """``probes`` seeded random normal batches (drawn in float64, stored as float32)."""
    g = torch.Generator().manual_seed(seed)
    xs = tuple(torch.randn((batch, *input_shape), generator=g, dtype=torch.float64).float() for _ in range(probes))
    return Probe(xs, RANDOM, "random normal")


def check_shape(probe: Probe | None, input_shape, who: str) -> None:
    """Refuse a probe made for another input shape (one line naming both)."""
    from surgery.core.errors import SurgeryError

    if probe is not None and probe.batches and tuple(probe.input_shape) != tuple(input_shape):
        raise SurgeryError(f"the probe images are {'x'.join(map(str, probe.input_shape))} but {who} takes "
                           f"{'x'.join(map(str, input_shape))}")


def probe_json(probe: Probe | None, images: int) -> dict:
    """The ``"probe"`` object of a report: ``probe`` itself, or (None) the seeded random normal
    inputs of ``images`` samples a command drew."""
    if probe is not None:
        return probe.to_json()
    return {"kind": RANDOM, "source": "random normal", "images": int(images), "data": None}


def probe_text(p: dict | None) -> str:
    """``probe: 64 images from DIR`` / ``probe: random normal`` from a report's probe object."""
    return f"probe: {p['source']}" if p else "probe: random normal"
