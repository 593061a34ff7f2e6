"""zoo/darknet.py and zoo/darknet_zoo.py against Darknet's own semantics.

Expected shapes and BFLOPs are derived from Darknet's formulas (parser.c / *_layer.c) and
Darknet's printouts; the per-op checks compare against straight ports of Darknet's C loops
(shortcut_cpu, reorg_cpu, forward_maxpool_layer) on small tensors.
"""

from __future__ import annotations

import io
import struct
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx

from conftest import shared_dir
from surgery.core.errors import SurgeryError
from zoo.darknet import (
    ConvolutionalLayer,
    DarknetLayer,
    WeightsHeader,
    build_darknet,
    load_darknet,
    parse_cfg,
    read_weights,
    save_darknet,
    weights_nbytes,
    write_cfg,
    write_weights,
)


DATA = shared_dir() / "data" / "darknet"  # tests/data/darknet: every cfg ships with the repo
CFGS = ["alexnet", "darknet53", "resnet50", "yolov2", "yolov3-tiny", "yolov3"]


def cfg_text(name: str) -> str:
    return (DATA / f"{name}.cfg").read_text()


def blocks_at(name: str, size: int | None = None) -> list[dict]:
    blocks = parse_cfg(cfg_text(name), f"{name}.cfg")
    if size:
        blocks[0]["width"] = blocks[0]["height"] = str(size)
    return blocks


def meta_net(name: str, size: int | None = None):
    with torch.device("meta"):
        return build_darknet(blocks_at(name, size), source=f"{name}.cfg")


# --------------------------------------------------------------------------------------
# an independent shape calculator, written straight from Darknet's parse_* / make_* code
# --------------------------------------------------------------------------------------


def darknet_shapes(blocks: list[dict]) -> list[tuple[int, int, int]]:
    def i(b, k, d):
        return int(b.get(k, d))

    net = blocks[0]
    c, h, w = i(net, "channels", 0), i(net, "height", 0), i(net, "width", 0)
    out = []
    for idx, b in enumerate(blocks[1:]):
        t = b["type"]
        if t == "convolutional":
            size, stride = i(b, "size", 1), i(b, "stride", 1)
            pad = size // 2 if i(b, "pad", 0) else i(b, "padding", 0)
            c, h, w = i(b, "filters", 1), (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
        elif t == "maxpool":
            stride = i(b, "stride", 1)
            size = i(b, "size", stride)
            pad = i(b, "padding", size - 1)
            h, w = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
        elif t == "avgpool":
            h = w = 1
        elif t == "connected":
            c, h, w = i(b, "output", 1), 1, 1
        elif t == "route":
            idx_ = [int(v) + idx if int(v) < 0 else int(v) for v in b["layers"].split(",")]
            c, h, w = sum(out[j][0] for j in idx_), out[idx_[0]][1], out[idx_[0]][2]
        elif t == "upsample":
            s = i(b, "stride", 2)
            h, w = h * s, w * s
        elif t == "reorg":
            s = i(b, "stride", 1)
            c, h, w = c * s * s, h // s, w // s
        elif t == "yolo":
            c = len(b["mask"].split(",")) * (i(b, "classes", 20) + 5)
        elif t == "region":
            c = i(b, "num", 1) * (i(b, "classes", 20) + i(b, "coords", 4) + 1)
        # shortcut, dropout, softmax, cost: the previous layer's shape
        out.append((c, h, w))
    return out


def conv_bflops(net) -> float:
    """Darknet's BFLOPs: 2 * out_c * out_h * out_w * (in_c / groups) * k * k over conv layers."""
    total = 0
    for layer in net.layers:
        if isinstance(layer, ConvolutionalLayer):
            n, oh, ow = layer.out_shape
            k, g = layer.conv.kernel_size[0], layer.conv.groups
            total += 2 * n * oh * ow * (layer.in_shape[0] // g) * k * k
    return total / 1e9


# Darknet's printed totals (pjreddie site / `darknet detector test` output).
BFLOPS = {"alexnet": 2.153, "darknet53": 18.570, "resnet50": 9.741, "yolov2": 62.938, "yolov3-tiny": 5.565,
          "yolov3": 140.692}
LAYERS = {"alexnet": 14, "darknet53": 78, "resnet50": 69, "yolov2": 32, "yolov3-tiny": 24, "yolov3": 107}

# (layer, section, out C x H x W) from Darknet's printout
YOLOV3_416 = [
    (0, "convolutional", (32, 416, 416)), (1, "convolutional", (64, 208, 208)), (4, "shortcut", (64, 208, 208)),
    (11, "shortcut", (128, 104, 104)), (36, "shortcut", (256, 52, 52)), (61, "shortcut", (512, 26, 26)),
    (74, "shortcut", (1024, 13, 13)), (79, "convolutional", (512, 13, 13)), (81, "convolutional", (255, 13, 13)),
    (82, "yolo", (255, 13, 13)), (83, "route", (512, 13, 13)), (84, "convolutional", (256, 13, 13)),
    (85, "upsample", (256, 26, 26)), (86, "route", (768, 26, 26)), (93, "convolutional", (255, 26, 26)),
    (94, "yolo", (255, 26, 26)), (95, "route", (256, 26, 26)), (97, "upsample", (128, 52, 52)),
    (98, "route", (384, 52, 52)), (105, "convolutional", (255, 52, 52)), (106, "yolo", (255, 52, 52)),
]
PINNED = {
    "yolov2": [(16, (512, 38, 38)), (25, (512, 38, 38)), (26, (64, 38, 38)), (27, (256, 19, 19)),
               (28, (1280, 19, 19)), (30, (425, 19, 19)), (31, (425, 19, 19))],
    "yolov3-tiny": [(10, (512, 13, 13)), (11, (512, 13, 13)), (15, (255, 13, 13)), (17, (256, 13, 13)),
                    (18, (128, 13, 13)), (19, (128, 26, 26)), (20, (384, 26, 26)), (22, (255, 26, 26))],
    "alexnet": [(0, (96, 55, 55)), (1, (96, 27, 27)), (2, (256, 27, 27)), (3, (256, 13, 13)), (7, (256, 6, 6)),
                (8, (4096, 1, 1)), (12, (1000, 1, 1))],
    "resnet50": [(0, (64, 128, 128)), (1, (64, 64, 64)), (5, (256, 64, 64)), (17, (512, 32, 32)),
                 (65, (2048, 8, 8)), (66, (2048, 1, 1)), (67, (1000, 1, 1))],
    "darknet53": [(0, (32, 256, 256)), (1, (64, 128, 128)), (36, (256, 32, 32)), (74, (1024, 8, 8)),
                  (75, (1024, 1, 1)), (76, (1000, 1, 1)), (77, (1000, 1, 1))],
}


@pytest.mark.parametrize("name", CFGS)
def test_cfg_shapes_match_darknet(name):
    net = meta_net(name)
    assert len(net.layers) == LAYERS[name]
    assert [l.out_shape for l in net.layers] == darknet_shapes(net.blocks)
    for idx, shape in PINNED.get(name, []):
        assert net.layers[idx].out_shape == shape, idx
    assert conv_bflops(net) == pytest.approx(BFLOPS[name], abs=5e-4)
    for i, layer in enumerate(net.layers):
        assert isinstance(layer, DarknetLayer) and layer.surgery_leaf and layer.index == i
        assert layer.section == net.blocks[i + 1]["type"]
        assert all(-1 <= j < i for j in layer.inputs)
    # a full-resolution forward on the meta device gives the declared output shapes
    with torch.no_grad():
        outs = net(torch.empty(1, *net.input_shape, device="meta"))
    assert [tuple(o.shape[1:]) for o in outs] == [net.layers[i].out_shape for i in net.output_indices]


def test_yolov3_416_printout_and_bflops():
    net = meta_net("yolov3", 416)
    for idx, section, shape in YOLOV3_416:
        layer = net.layers[idx]
        assert (layer.section, layer.out_shape) == (section, shape), idx
    assert net.layers[86].inputs == (85, 61) and net.layers[98].inputs == (97, 36)
    assert net.layers[83].inputs == (79,) and net.layers[36].inputs == (35, 33)
    assert net.output_indices == (82, 94, 106)
    assert round(conv_bflops(net), 2) == 65.86


SMALL = {"alexnet": None, "darknet53": 64, "resnet50": 64, "yolov2": 64, "yolov3-tiny": 64, "yolov3": 64}


@pytest.mark.parametrize("name", CFGS)
def test_forward_small_resolution(name):
    """A real forward at a cheap resolution: output shapes equal Darknet's at that size."""
    torch.manual_seed(0)
    net = build_darknet(blocks_at(name, SMALL[name])).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, *net.input_shape))
    assert [tuple(o.shape[1:]) for o in outs] == [net.layers[i].out_shape for i in net.output_indices]
    assert all(torch.isfinite(o).all() for o in outs)


def test_forward_frees_activations():
    """Only activations a later route/shortcut needs stay alive during forward."""
    net = build_darknet(_yolov3_like_cfg()).eval()
    refs, peak = [], [0]

    def hook(mod, args, out):
        peak[0] = max(peak[0], len({id(r()) for r in refs if r() is not None}))
        refs.append(weakref.ref(out))

    for layer in net.layers:
        layer.register_forward_hook(hook)
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 32, 32))
    assert peak[0] <= 4
    alive = {id(r()) for r in refs if r() is not None}
    assert alive == {id(o) for o in outs}


# --------------------------------------------------------------------------------------
# cfg text
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CFGS)
def test_cfg_round_trip(name):
    blocks = parse_cfg(cfg_text(name))
    assert blocks[0]["type"] == "net"
    assert parse_cfg(write_cfg(blocks)) == blocks


def test_parse_tolerates_comments_whitespace_and_aliases():
    text = "# top\n[network]\n width = 8\nheight=8 # inline\n\tchannels=3\n\n; c\n[conv]\nfilters = 4\nsize=3\npad=1\nactivation=leaky\n"
    blocks = parse_cfg(text)
    assert blocks == [{"type": "net", "width": "8", "height": "8", "channels": "3"},
                      {"type": "convolutional", "filters": "4", "size": "3", "pad": "1", "activation": "leaky"}]
    net = build_darknet(blocks)
    assert net.layers[0].out_shape == (4, 8, 8) and "[convolutional]" in net.cfg_text()
    cost = parse_cfg(text + "[cost]\ntype=sse\n")  # an option named `type` survives the round trip
    assert cost[-1] == {"type": "cost", "@type": "sse"} and parse_cfg(write_cfg(cost)) == cost
    assert "type=sse" in build_darknet(cost).cfg_text()


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

NET = "[net]\nchannels=3\nheight=16\nwidth=16\n"
CONV = "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"


@pytest.mark.parametrize("text, words", [
    (NET + CONV + "[lstmx]\noutput=3\n", ["[lstmx]", "mycfg.cfg:10", "not a Darknet section"]),
    (NET + CONV + "[conv_lstm]\noutput=3\n", ["[conv_lstm]", "mycfg.cfg:10", "not supported"]),  # AlexeyAB only
    (NET + CONV + "[route]\nlayers=-5\n", ["layer 1 [route]", "layers=-5", "-4"]),
    (NET + CONV + "[route]\nlayers=3\n", ["layer 1 [route]", "layers=3", "not an earlier layer"]),
    (NET + CONV + "[route]\n", ["layer 1 [route]", "layers="]),
    (NET + "[route]\nlayers=-1\n", ["layer 0 [route]"]),
    (NET + CONV + "[shortcut]\nfrom=-7\n", ["layer 1 [shortcut]", "from=-7"]),
    (NET + CONV + "[convolutional]\nfilters=255\nsize=1\nactivation=linear\n[yolo]\nmask=0,1,2\nclasses=80\nnum=3\n"
     "anchors=10,13,16,30\n", ["layer 2 [yolo]", "4 anchor values", "num=3"]),
    (NET + CONV + "[convolutional]\nfilters=12\nsize=1\nactivation=linear\n[yolo]\nmask=0,1,2\nclasses=80\nnum=3\n",
     ["layer 2 [yolo]", "12 channels", "255"]),
    (NET + "[convolutional]\nfilters=8\nsize=3\nactivation=leakyy\n", ["layer 0 [convolutional]", "leakyy", "leaky"]),
    (NET + "[convolutional]\nfilters=x8\nsize=3\n", ["layer 0 [convolutional]", "filters='x8'"]),
    (NET + CONV + "[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,0\n", ["layer 2 [route]", "8x8", "16x16"]),
    (NET + CONV + "[convolutional]\nfilters=8\nsize=1\nstride_x=2\nstride_y=1\n[shortcut]\nfrom=-2\n",
     ["layer 2 [shortcut]", "ratios"]),
    ("[convolutional]\nfilters=8\n", ["[net]"]),
    ("[net]\nchannels=3\n", ["input size"]),
    (NET + "filters\n", ["mycfg.cfg:5", "key=value"]),
])
def test_bad_cfg_raises(text, words):
    with pytest.raises(SurgeryError) as e:
        build_darknet(text, source="mycfg.cfg")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("mycfg.cfg")
    for w in words:
        assert w in msg, (w, msg)


def test_missing_files_raise(tmp_path):
    with pytest.raises(SurgeryError, match="no such cfg"):
        load_darknet(tmp_path / "nope.cfg")
    (tmp_path / "a.cfg").write_text(NET + CONV)
    with pytest.raises(SurgeryError, match="no such weights"):
        load_darknet(tmp_path / "a.cfg", tmp_path / "nope.weights")


def _small_weighted_net():
    text = NET + CONV + "[maxpool]\nsize=2\nstride=2\n" + \
        "[convolutional]\nbatch_normalize=1\nfilters=6\nsize=1\nactivation=relu\n" + \
        "[local]\nfilters=2\nsize=3\nstride=1\npad=1\nactivation=linear\n" + \
        "[connected]\noutput=5\nbatch_normalize=1\nactivation=leaky\n" + \
        "[connected]\noutput=3\nactivation=linear\n[softmax]\n"
    return text


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)  # positive: valid running_var


def test_truncated_and_oversized_weights(tmp_path):
    net = build_darknet(_small_weighted_net(), source="small.cfg")
    _randomize(net)
    path = tmp_path / "w.weights"
    nbytes = write_weights(net, path)
    assert nbytes == path.stat().st_size == weights_nbytes(net)
    data = path.read_bytes()
    # conv 0: 8 biases (no BN) + 8*3*9 weights; conv 2 starts after that
    conv0 = 20 + 4 * (8 + 8 * 27)
    (tmp_path / "t.weights").write_bytes(data[:conv0 + 10])
    with pytest.raises(SurgeryError) as e:
        read_weights(build_darknet(_small_weighted_net(), source="small.cfg"), tmp_path / "t.weights")
    msg = str(e.value)
    assert "t.weights" in msg and "layer 2 [convolutional]" in msg and str(conv0 + 10) in msg and str(len(data)) in msg
    (tmp_path / "o.weights").write_bytes(data + b"\0" * 12)
    with pytest.raises(SurgeryError) as e:
        read_weights(build_darknet(_small_weighted_net(), source="small.cfg"), tmp_path / "o.weights")
    msg = str(e.value)
    assert "o.weights" in msg and "12 bytes left over" in msg and str(len(data)) in msg
    (tmp_path / "h.weights").write_bytes(data[:10])
    with pytest.raises(SurgeryError, match="too short"):
        read_weights(net, tmp_path / "h.weights")
    with pytest.raises(SurgeryError, match="exists; pass --force"):
        write_weights(net, path)


def test_weights_file_layout():
    """Darknet's order: conv [biases, (scales, mean, var,) weights]; connected [biases,
    weights, (scales, mean, var)], weights transposed for major/minor > 1000; local [biases, weights]."""
    text = NET + "[convolutional]\nbatch_normalize=1\nfilters=2\nsize=1\nactivation=linear\n" + \
        "[connected]\noutput=3\nbatch_normalize=1\nactivation=linear\n" + \
        "[local]\nfilters=1\nsize=1\nstride=1\nactivation=linear\n"
    for header in (WeightsHeader(0, 2, 0, 7), WeightsHeader(0, 1, 0, 7), WeightsHeader(1, 1001, 3, 7)):
        net = build_darknet(text)
        nfloat = (weights_nbytes(net, header) - header.nbytes) // 4
        floats = np.arange(nfloat, dtype="<f4")
        buf = io.BytesIO(header.pack() + floats.tobytes())
        assert read_weights(net, buf) == header
        conv, fc, local = net.layers
        got = [conv.bn.bias, conv.bn.weight, conv.bn.running_mean, conv.bn.running_var, conv.conv.weight,
               fc.bn.bias]
        pos = 0
        for t in got:
            assert torch.equal(t.flatten(), torch.arange(pos, pos + t.numel(), dtype=torch.float32))
            pos += t.numel()
        w = np.arange(pos, pos + 3 * 2 * 16 * 16, dtype=np.float32)
        want = w.reshape(2 * 16 * 16, 3).T if header.transpose else w.reshape(3, -1)
        assert torch.equal(fc.fc.weight, torch.from_numpy(np.ascontiguousarray(want)))
        pos += w.size
        for t in (fc.bn.weight, fc.bn.running_mean, fc.bn.running_var, local.bias, local.weight):
            assert torch.equal(t.flatten(), torch.arange(pos, pos + t.numel(), dtype=torch.float32))
            pos += t.numel()
        assert pos == nfloat
        out = io.BytesIO()
        write_weights(net, out)
        assert out.getvalue() == buf.getvalue()
        assert header.nbytes == (20 if header.seen_64bit else 16)


def _round_trip(text: str, header: WeightsHeader, tmp_path: Path, seed: int):
    a = build_darknet(text)
    _randomize(a, seed)
    p1, p2 = tmp_path / "a.weights", tmp_path / "b.weights"
    write_weights(a, p1, header=header)
    b = build_darknet(text)
    assert read_weights(b, p1) == header and b.weights_header == header
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if sa[k].is_floating_point():
            assert torch.equal(sa[k], sb[k]), k
    write_weights(b, p2)
    assert p1.read_bytes() == p2.read_bytes()
    return b


@pytest.mark.parametrize("name", CFGS)
def test_weights_round_trip_every_cfg(name, tmp_path):
    header = WeightsHeader(0, 2, 0, 2**40 + 3)  # 64-bit seen
    _round_trip(cfg_text(name), header, tmp_path, seed=1)


@pytest.mark.parametrize("header", [WeightsHeader(0, 1, 0, 12345), WeightsHeader(0, 2, 0, 2**33),
                                    WeightsHeader(1, 0, 0, 9), WeightsHeader(0, 1001, 0, 5)],
                         ids=["v0.1-seen32", "v0.2-seen64", "v1.0-seen64", "transposed-seen32"])
def test_weights_round_trip_headers(header, tmp_path):
    net = _round_trip(_small_weighted_net(), header, tmp_path, seed=2)
    assert (tmp_path / "a.weights").stat().st_size == weights_nbytes(net)


def test_weights_round_trip_tiny_v01(tmp_path):
    _round_trip(cfg_text("yolov3-tiny"), WeightsHeader(0, 1, 0, 77), tmp_path, seed=3)


def test_weights_cutoff_and_save_load(tmp_path):
    net = build_darknet(_small_weighted_net(), source="small.cfg")
    _randomize(net, 4)
    buf = io.BytesIO()
    write_weights(net, buf, cutoff=3)  # like darknet53.conv.74: only the first layers
    fresh = build_darknet(_small_weighted_net())
    read_weights(fresh, io.BytesIO(buf.getvalue()), cutoff=3)
    assert torch.equal(fresh.layers[2].conv.weight, net.layers[2].conv.weight)
    with pytest.raises(SurgeryError, match="truncated"):
        read_weights(fresh, io.BytesIO(buf.getvalue()))
    save_darknet(net, tmp_path / "m.cfg", tmp_path / "m.weights")
    back = load_darknet(tmp_path / "m.cfg", tmp_path / "m.weights").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x)[0], net.eval()(x)[0])
    with pytest.raises(SurgeryError, match="exists; pass --force"):
        save_darknet(net, tmp_path / "m.cfg", tmp_path / "other.weights")
    assert not (tmp_path / "other.weights").exists()


# --------------------------------------------------------------------------------------
# ops against ports of Darknet's C loops
# --------------------------------------------------------------------------------------


def ref_shortcut(add, out, s1, s2):
    """blas.c shortcut_cpu(batch, w1,h1,c1, add, w2,h2,c2, s1, s2, out)."""
    out = out.copy()
    b_, c1, h1, w1 = add.shape
    _, c2, h2, w2 = out.shape
    stride, sample = max(1, w1 // w2), max(1, w2 // w1)
    for b in range(b_):
        for k in range(min(c1, c2)):
            for j in range(min(h1, h2)):
                for i in range(min(w1, w2)):
                    out[b, k, j * sample, i * sample] = s1 * out[b, k, j * sample, i * sample] + s2 * add[b, k, j * stride, i * stride]
    return out


def ref_reorg(x, s, forward):
    """blas.c reorg_cpu(x, w, h, c, batch, stride, forward, out) on the layer's input dims."""
    b_, c, h, w = x.shape
    flat, out = x.reshape(-1), np.zeros(x.size, dtype=x.dtype)
    oc = c // (s * s)
    for b in range(b_):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, off = k % oc, k // oc
                    w2, h2 = i * s + off % s, j * s + off // s
                    out_index = w2 + w * s * (h2 + h * s * (c2 + oc * b))
                    if forward:
                        out[out_index] = flat[in_index]
                    else:
                        out[in_index] = flat[out_index]
    return out


def ref_maxpool(x, size, stride, pad):
    b_, c, h, w = x.shape
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.empty((b_, c, oh, ow), dtype=x.dtype)
    off = -(pad // 2)
    for i in range(oh):
        for j in range(ow):
            best = np.full((b_, c), -np.finfo(np.float32).max, dtype=x.dtype)
            for n in range(size):
                for m in range(size):
                    y, xx = off + i * stride + n, off + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        best = np.maximum(best, x[:, :, y, xx])
            out[:, :, i, j] = best
    return out


def _capture(net, x):
    seen = {}
    for layer in net.layers:
        layer.register_forward_hook(lambda m, a, o: seen.__setitem__(m.index, ([t.numpy() for t in a], o.numpy())))
    with torch.no_grad():
        net.eval()(x)
    return seen


def test_shortcut_channels_and_strides_like_darknet():
    text = "[net]\nchannels=3\nheight=8\nwidth=8\n" + \
        "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n" + \
        "[convolutional]\nfilters=6\nsize=3\nstride=2\npad=1\nactivation=linear\n" + \
        "[shortcut]\nfrom=-2\nactivation=linear\n" + \
        "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n" + \
        "[upsample]\nstride=2\n" + \
        "[shortcut]\nfrom=-4\nalpha=0.5\nbeta=2\nactivation=leaky\n" + \
        "[shortcut]\nfrom=-6\nactivation=linear\n"
    net = build_darknet(text)
    assert [l.out_shape for l in net.layers] == [(4, 8, 8), (6, 4, 4), (6, 4, 4), (2, 4, 4), (2, 8, 8), (2, 8, 8), (2, 8, 8)]
    assert net.layers[5].inputs == (4, 1)
    seen = _capture(net, torch.randn(2, 3, 8, 8))
    for idx, (s1, s2, leaky) in {2: (1, 1, False), 5: (0.5, 2, True), 6: (1, 1, False)}.items():
        (x, from_x), out = seen[idx]
        want = ref_shortcut(from_x, x, s1, s2)
        if leaky:
            want = np.where(want > 0, want, 0.1 * want)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reverse", [0, 1])
def test_reorg_like_darknet(reverse):
    text = "[net]\nchannels=8\nheight=4\nwidth=6\n" + f"[reorg]\nstride=2\nreverse={reverse}\n"
    net = build_darknet(text)
    assert net.layers[0].out_shape == ((2, 8, 12) if reverse else (32, 2, 3))
    x = torch.randn(2, 8, 4, 6)
    with torch.no_grad():
        y = net(x)[0]
    assert tuple(y.shape[1:]) == net.layers[0].out_shape
    np.testing.assert_array_equal(y.numpy().reshape(-1), ref_reorg(x.numpy(), 2, forward=bool(reverse)))


@pytest.mark.parametrize("size, stride, padding, hw", [(2, 1, None, 13), (2, 2, None, 13), (3, 2, 0, 13),
                                                       (3, 2, None, 9), (3, 1, None, 6), (5, 3, 2, 11)])
def test_maxpool_like_darknet(size, stride, padding, hw):
    pad = f"padding={padding}\n" if padding is not None else ""
    net = build_darknet(f"[net]\nchannels=2\nheight={hw}\nwidth={hw}\n[maxpool]\nsize={size}\nstride={stride}\n{pad}")
    x = torch.randn(1, 2, hw, hw)
    with torch.no_grad():
        y = net(x)[0]
    want = ref_maxpool(x.numpy(), size, stride, size - 1 if padding is None else padding)
    assert tuple(y.shape[1:]) == net.layers[0].out_shape == want.shape[1:]
    np.testing.assert_array_equal(y.numpy(), want)


def test_route_groups_upsample_and_activations():
    text = "[net]\nchannels=4\nheight=4\nwidth=4\n" + \
        "[convolutional]\nfilters=6\nsize=1\nactivation=mish\n" + \
        "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + \
        "[route]\nlayers=-1,-2,0\n" + \
        "[upsample]\nstride=3\nscale=2\n" + \
        "[activation]\nactivation=relie\n"
    net = build_darknet(text)
    assert [l.out_shape for l in net.layers] == [(6, 4, 4), (3, 4, 4), (15, 4, 4), (15, 12, 12), (15, 12, 12)]
    assert net.layers[2].inputs == (1, 0, 0)
    seen = _capture(net, torch.randn(1, 4, 4, 4))
    c0 = seen[0][1]
    np.testing.assert_array_equal(seen[1][1], c0[:, 3:])
    np.testing.assert_array_equal(seen[2][1], np.concatenate([c0[:, 3:], c0, c0], 1))
    np.testing.assert_array_equal(seen[3][1], 2 * seen[2][1].repeat(3, 2).repeat(3, 3))
    u = seen[3][1]
    np.testing.assert_allclose(seen[4][1], np.where(u > 0, u, 0.01 * u), rtol=1e-6)


def test_fx_trace_has_darknet_data_flow():
    class Leafy(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return getattr(m, "surgery_leaf", False) or super().is_leaf_module(m, qualname)

    with torch.device("meta"):
        net = build_darknet(_yolov3_like_cfg())
    graph = Leafy().trace(net)
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    assert list(calls) == [f"layers.{i}" for i in range(len(net.layers))]
    for i, layer in enumerate(net.layers):
        args = [a.target if a.op == "call_module" else "input" for a in calls[f"layers.{i}"].args]
        assert args == [f"layers.{j}" if j >= 0 else "input" for j in layer.inputs], i
    x = torch.randn(1, 3, 32, 32)
    real = build_darknet(_yolov3_like_cfg()).eval()
    gm = fx.GraphModule(real, Leafy().trace(real))
    with torch.no_grad():
        for a, b in zip(gm(x), real(x), strict=True):
            assert torch.equal(a, b)


def _yolov3_like_cfg() -> str:
    from zoo.darknet_zoo import yolov3_cfg

    return yolov3_cfg(classes=1, width=32, height=32)


def test_yolo_decode_and_outputs():
    from zoo.darknet_zoo import yolov3_tiny

    net = yolov3_tiny(classes=3, width=64, height=64).eval()
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 2, 2), (2, 24, 4, 4)]
    boxes = net.layers[net.output_indices[0]].decode(outs[0])
    assert boxes.shape == (2, 3 * 2 * 2, 8)
    assert ((boxes[..., :2] >= 0) & (boxes[..., :2] <= 1)).all()
    assert net.layers[16].anchors == ((81.0, 82.0), (135.0, 169.0), (344.0, 319.0))


# --------------------------------------------------------------------------------------
# zoo
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, cfg, kwargs", [
    ("darknet53_cfg", "darknet53", {}), ("yolov3_cfg", "yolov3", {}), ("yolov3_tiny_cfg", "yolov3-tiny", {}),
    ("yolov3_cfg", "yolov3", {"width": 608, "height": 608}),
])
def test_zoo_cfg_equals_pjreddie_cfg(fn, cfg, kwargs):
    import zoo.darknet_zoo as dz

    ours, theirs = parse_cfg(getattr(dz, fn)(**kwargs)), parse_cfg(cfg_text(cfg))
    assert ours[1:] == theirs[1:]  # every layer section, every option
    if cfg != "yolov3" or kwargs:
        assert ours[0] == theirs[0]


@pytest.mark.parametrize("name, params, shape, n", [("darknet53", 41_609_928, (3, 256, 256), 78),
                                                    ("yolov3", 61_949_149, (3, 416, 416), 107),
                                                    ("yolov3_tiny", 8_852_366, (3, 416, 416), 24)])
def test_zoo_entries(name, params, shape, n):
    import zoo

    entry = zoo.get(name)
    with torch.device("meta"):
        net = entry.build()
    assert sum(p.numel() for p in net.parameters()) == params
    assert abs(params - entry.published_params) <= entry.params_rtol * entry.published_params
    assert entry.shape_for({}) == shape == net.input_shape and len(net.layers) == n
    if name == "yolov3":
        assert entry.shape_for({"width": "320"}) == (3, 416, 320)
        with torch.device("meta"):
            voc = entry.build(classes=20)
        assert voc.layers[81].out_shape == (75, 13, 13) and voc.layers[106].out_shape == (75, 52, 52)
        with pytest.raises(SurgeryError, match="anchors"):
            entry.build(anchors="1,2,3")
        with pytest.raises(SurgeryError, match="multiples of 32"):
            entry.build(width=100)
