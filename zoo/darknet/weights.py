"""The ``.weights`` format, byte for byte: header, tensor order (parser.c
``load_weights_upto``), reading with size checks, writing."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from surgery.core.errors import SurgeryError
from surgery.core.files import atomic_write
from typing import TYPE_CHECKING

from zoo.darknet.conv_layers import ConnectedLayer, ConvolutionalLayer, LocalLayer
from zoo.darknet.layers import DarknetLayer
from zoo.darknet.norm_layers import BatchnormLayer
from zoo.darknet.seg_layers import DeconvolutionalLayer

if TYPE_CHECKING:
    from zoo.darknet.net import DarknetNet


# the network
# ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsHeader:
    """The ``.weights`` header: int32 major, minor, revision, then ``seen`` images."""

    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_64bit(self) -> bool:  # parser.c load_weights_upto
        return (self.major * 10 + self.minor) >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def transpose(self) -> bool:  # connected weights stored input-major
        return self.major > 1000 or self.minor > 1000

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_64bit else 4)

    def pack(self) -> bytes:
        seen = struct.pack("<Q" if self.seen_64bit else "<I", self.seen)
        return struct.pack("<3i", self.major, self.minor, self.revision) + seen


@dataclass(frozen=True)
class _Chunk:
    layer: DarknetLayer
    tensor: torch.Tensor
    file_rc: tuple[int, int] | None = None  # stored as a rows x cols matrix, transposed in memory


def _plan(net: DarknetNet, header: WeightsHeader, cutoff: int | None, *, save: bool = False) -> list[_Chunk]:
    """The tensors a .weights file holds, in file order: what parser.c ``load_weights_upto``
    reads, or with ``save=True`` what ``save_weights_upto`` writes. The two differ only where
    the cfg says so: a ``dontload=1`` layer is not read and a ``dontsave=1`` layer not written
    (no bytes at all), ``numload=N`` reads a convolutional/deconvolutional layer's first N filters
    only and ``dontloadscales=1`` reads no BatchNorm statistics, while saving writes them all."""
    chunks: list[_Chunk] = []
    for layer in list(net.layers)[:cutoff]:
        if layer.dontsave if save else layer.dontload:
            continue
        scales = save or not layer.dontloadscales
        if isinstance(layer, (ConvolutionalLayer, DeconvolutionalLayer)):
            chunks += _conv_chunks(layer, scales, None if save else layer.numload or None)
        elif isinstance(layer, BatchnormLayer):  # load_batchnorm_weights: no biases, dontloadscales ignored
            norm = layer.norm
            chunks += [_Chunk(layer, t) for t in (norm.weight, norm.running_mean, norm.running_var)]
        elif isinstance(layer, ConnectedLayer):
            bn, fc = layer.bn, layer.fc
            chunks.append(_Chunk(layer, bn.bias if bn is not None else fc.bias))
            chunks.append(_Chunk(layer, fc.weight, (fc.in_features, fc.out_features) if header.transpose else None))
            if bn is not None and scales:
                chunks += [_Chunk(layer, t) for t in (bn.weight, bn.running_mean, bn.running_var)]
        elif isinstance(layer, LocalLayer):
            chunks += [_Chunk(layer, layer.bias), _Chunk(layer, layer.weight)]
        elif hasattr(layer, "darknet_tensors"):  # rnn/gru/lstm/crnn (recurrent.py): sublayers in file order
            chunks += [_Chunk(layer, t, rc) for t, rc in layer.darknet_tensors(header.transpose)]
    return chunks


def _conv_chunks(layer, scales: bool, numload: int | None) -> list[_Chunk]:
    """load_convolutional_weights / save_convolutional_weights: biases, [scales, rolling mean,
    rolling variance], weights. ``numload``: only the first N biases and statistics and the
    first c/groups*N*size*size weights (a flat prefix: N whole filters of a convolution,
    ConvTranspose2d's c x filters x size x size layout for a deconvolution); the rest keep their
    values."""
    bn, conv = layer.bn, layer.conv
    n = conv.out_channels if numload is None else numload
    chunks = [_Chunk(layer, (bn.bias if bn is not None else conv.bias)[:n])]
    if bn is not None and scales:
        chunks += [_Chunk(layer, t[:n]) for t in (bn.weight, bn.running_mean, bn.running_var)]
    k = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    if isinstance(layer, DeconvolutionalLayer):
        chunks.append(_Chunk(layer, conv.weight.reshape(-1)[:k * n]))
    else:  # flipped=1: stored as a (c*size*size) x n matrix, transposed on load
        chunks.append(_Chunk(layer, conv.weight[:n], (k, n) if layer.flipped else None))
    return chunks


def weights_nbytes(net: DarknetNet, header: WeightsHeader | None = None, cutoff: int | None = None, *,
                   save: bool = False) -> int:
    """Size in bytes of the .weights file ``net`` reads (``save=True``: writes; they differ only
    for dontload=/dontsave=/numload=/dontloadscales=, see :func:`_plan`)."""
    header = header or net.weights_header
    return header.nbytes + 4 * sum(c.tensor.numel() for c in _plan(net, header, cutoff, save=save))


def weights_io_problem(net: DarknetNet) -> str | None:
    """Why Darknet would not read back, with this cfg, the ``.weights`` it writes for it: the first
    layer whose dontload=/dontsave=/numload=/dontloadscales= makes reading and writing differ
    (they steer one load or one save, not the network); None when the two agree."""
    for layer, read, saved in zip(net.layers, layer_floats(net), layer_floats(net, save=True)):
        if read != saved:
            key = next(k for k in ("dontload", "dontsave", "numload", "dontloadscales") if getattr(layer, k))
            return (f"layer {layer.index} [{layer.section}] has {key}={layer.options.get(key)}: Darknet's load_weights "
                    f"reads {read} values for it but save_weights writes {saved}")
    return None


def _name(f) -> str:
    return str(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", "<weights>"))


@dataclass(frozen=True)
class WeightsLoad:
    """What :func:`load_weights` read. Layers ``0..cutoff-1`` came from the file (Darknet's
    ``load_weights_upto``); ``from_file`` lists those among them that hold weights, ``initialised``
    the weighted layers the file did not fill (at or past the cutoff, or ``dontload=1``), which
    keep the values they were built with."""

    file: str
    header: WeightsHeader
    cutoff: int | None  # None: the file holds every layer of the cfg
    inferred: bool  # the cutoff was found from the file size
    from_file: tuple[int, ...]
    initialised: tuple[int, ...]


def layer_floats(net: DarknetNet, header: WeightsHeader | None = None, *, save: bool = False) -> list[int]:
    """``layer_floats(net)[i]``: the float32 values layer ``i`` takes in the ``.weights`` file
    ``net`` reads (``save=True``: writes), 0 for layers without weights."""
    counts = [0] * len(net.layers)
    for c in _plan(net, header or net.weights_header, None, save=save):
        counts[c.layer.index] += c.tensor.numel()
    return counts


def infer_cutoff(net: DarknetNet, header: WeightsHeader, size: int, name: str = "<weights>") -> int | None:
    """The cutoff of a partial ``.weights`` file of ``size`` bytes: the largest N such that the
    weights of layers ``0..N-1`` fill the file exactly (layers without weights do not change the
    size, so the largest such prefix is taken); None when the file holds the whole cfg.
    SurgeryError when no prefix fits."""
    counts = layer_floats(net, header)
    total = header.nbytes + 4 * sum(counts)
    if size == total:
        return None
    if size > total:
        raise SurgeryError(
            f"{name}: {size - total} bytes left over after the last layer ({total} bytes expected for "
            f"{net.source}, the file has {size}); the .weights was saved for a different cfg"
        )
    prefixes = list(_prefixes(counts, header.nbytes))
    fits = [n for n, b in prefixes if b == size]
    if fits:
        return max(fits)
    low = max((p for p in prefixes if p[1] < size), key=lambda p: p[0])
    high = min((p for p in prefixes if p[1] > size), key=lambda p: p[0])
    raise SurgeryError(
        f"{name}: {size} bytes are not the weights of any first layers of {net.source} (the first {low[0]} "
        f"layers take {low[1]} bytes, the first {high[0]} take {high[1]}, all {len(counts)} take {total}); "
        "the .weights was saved for a different cfg or is cut short"
    )


def _prefixes(counts: list[int], start: int):
    """(N, bytes of the header and layers 0..N-1) for N = 0..len(counts)."""
    pos = start
    yield 0, pos
    for n, k in enumerate(counts, 1):
        pos += 4 * k
        yield n, pos


def read_weights(net: DarknetNet, src: str | os.PathLike | BinaryIO, *, cutoff: int | None = None) -> WeightsHeader:
    """Load a Darknet ``.weights`` file (path or binary file object) into ``net``.

    ``cutoff``: the file holds only layers ``0..cutoff-1``, as Darknet's ``partial`` writes
    them (e.g. ``darknet53.conv.74`` for yolov3.cfg: cutoff=74). The file must hold exactly
    what the cfg needs, else SurgeryError names the layer where it ran out or the bytes left
    over. Sets and returns ``net.weights_header``. :func:`load_weights` also finds the cutoff
    from the file size and reports which layers came from the file.
    """
    return load_weights(net, src, cutoff=cutoff).header


def load_weights(net: DarknetNet, src: str | os.PathLike | BinaryIO, *, cutoff: int | str | None = None) -> WeightsLoad:
    """:func:`read_weights` with a report. ``cutoff="infer"``: a file holding the whole cfg
    loads whole; a shorter one loads as the partial file of the largest layer prefix whose
    weights fill it exactly (:func:`infer_cutoff`), the rest of ``net`` keeping its values."""
    name = _name(src)
    if cutoff is not None and cutoff != "infer":
        if isinstance(cutoff, bool) or not isinstance(cutoff, int) or not 0 <= cutoff <= len(net.layers):
            raise SurgeryError(f"{name}: cutoff {cutoff!r} must be a layer count from 0 to {len(net.layers)} "
                               f"(the layers of {net.source})")
    data: bytes | None = None
    if isinstance(src, (str, os.PathLike)):
        try:  # the size and header first: a file of the wrong size is refused before it is read
            with open(src, "rb") as f:
                size, head = os.fstat(f.fileno()).st_size, f.read(20)
        except FileNotFoundError:
            raise SurgeryError(f"{name}: no such weights file") from None
        except OSError as e:
            raise SurgeryError(f"{name}: cannot read weights ({e.strerror})") from None
    else:
        data = src.read()
        size, head = len(data), data[:20]
    if size < 16:
        raise SurgeryError(f"{name}: {size} bytes is too short for a Darknet .weights header (16 or 20 bytes)")
    major, minor, revision = struct.unpack_from("<3i", head, 0)
    seen64 = WeightsHeader(major, minor, revision).seen_64bit
    if seen64 and size < 20:
        raise SurgeryError(f"{name}: {size} bytes is too short for a version {major}.{minor} .weights header (20 bytes)")
    seen = struct.unpack_from("<Q" if seen64 else "<I", head, 12)[0]
    header = WeightsHeader(major, minor, revision, seen)
    inferred = cutoff == "infer"
    if inferred:
        cutoff = infer_cutoff(net, header, size, name)
        inferred = cutoff is not None
    chunks = _plan(net, header, cutoff)
    total = header.nbytes + 4 * sum(c.tensor.numel() for c in chunks)
    if size < total:  # find the layer where it runs out, before touching any tensor
        pos = header.nbytes
        for c in chunks:
            end = pos + 4 * c.tensor.numel()
            if end > size:
                L = c.layer
                raise SurgeryError(
                    f"{name}: truncated weights: ran out in layer {L.index} [{L.section}], which needs bytes "
                    f"{pos}..{end} but the file has {size} bytes ({total} expected for {net.source}); "
                    + ("the .weights does not match the cfg (pass cutoff= to load only the first layers)" if cutoff is None
                       else f"it does not hold the weights of the first {cutoff} layers")
                )
            pos = end
    if size > total:
        raise SurgeryError(
            f"{name}: {size - total} bytes left over after the last layer ({total} bytes expected for "
            f"{net.source}, the file has {size}); the .weights was saved for a different cfg"
        )
    if data is None:
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise SurgeryError(f"{name}: cannot read weights ({e.strerror})") from None
    floats = np.frombuffer(data, dtype="<f4", offset=header.nbytes)
    pos = 0
    with torch.no_grad():
        for c in chunks:
            t = c.tensor
            if t.device.type == "meta":
                raise SurgeryError(f"{name}: cannot load weights into a network on the meta device; build it on the CPU")
            arr = floats[pos:pos + t.numel()]
            pos += t.numel()
            if c.file_rc is not None:
                arr = arr.reshape(c.file_rc).T
            t.copy_(torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(t.shape))  # a writable copy
    net.weights_header = header
    end = len(net.layers) if cutoff is None else cutoff
    read = layer_floats(net, header)
    # a layer past the cutoff, or with dontload=1, keeps the values it was built with
    weighted = [l.index for l in net.layers if any(t.numel() for t in l.state_dict().values())]
    from_file = tuple(i for i in weighted if i < end and read[i])
    return WeightsLoad(name, header, cutoff, inferred, from_file, tuple(i for i in weighted if i not in from_file))


def _serialize(net: DarknetNet, header: WeightsHeader, cutoff: int | None) -> bytes:
    parts = [header.pack()]
    for c in _plan(net, header, cutoff, save=True):
        arr = c.tensor.detach().to("cpu", torch.float32).numpy().reshape(-1)
        if c.file_rc is not None:
            rows, cols = c.file_rc
            arr = arr.reshape(cols, rows).T
        parts.append(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return b"".join(parts)


def write_weights(net: DarknetNet, dest: str | os.PathLike | BinaryIO, *, header: WeightsHeader | None = None,
                  cutoff: int | None = None, overwrite: bool = False) -> int:
    """Write ``net`` as a Darknet ``.weights`` file (path, written atomically, or binary
    file object) with ``header`` (default: ``net.weights_header``, i.e. the header it was
    read with, or 0.2.0 as Darknet's save_weights writes). Returns the bytes written."""
    if any(p.device.type == "meta" for p in net.parameters()):
        raise SurgeryError(f"{_name(dest)}: cannot write weights of a network on the meta device")
    data = _serialize(net, header or net.weights_header, cutoff)
    if isinstance(dest, (str, os.PathLike)):
    
        atomic_write([dest], lambda tmps: tmps[0].write_bytes(data), force=overwrite)
    else:
        dest.write(data)
    return len(data)
