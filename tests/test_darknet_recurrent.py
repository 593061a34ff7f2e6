"""zoo/darknet/recurrent.py: [rnn], [gru], [lstm], [crnn] against numpy ports of pjreddie's C.

The expected outputs come from loop-for-loop ports of ``forward_rnn_layer``,
``forward_gru_layer``, ``forward_lstm_layer``, ``forward_crnn_layer`` (inference path,
``net.train = 0``, zero initial state), their ``forward_connected_layer`` /
``forward_convolutional_layer`` sublayers (gemm, im2col_cpu, normalize/scale/add_bias,
activations.h), with weights taken from a ``.weights`` byte string in parser.c's
``load_weights_upto`` order. File sizes and MACs are the closed forms of parser.c and the
layer's gemms.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from analyzers.cost import analyze
from surgery.core.errors import SurgeryError
from surgery.core import io as sio
from zoo.darknet import WeightsHeader, build_darknet, read_weights, weights_nbytes, write_weights

DATA = ROOT / "tests" / "data" / "darknet"
EPS = 1e-5  # zoo.darknet.cfg.BN_EPS: sqrt(var + eps) (AlexeyAB/cuDNN), the builder's documented BN deviation


# --------------------------------------------------------------------------------------
# parser.c load order, with random values made up as they are read
# --------------------------------------------------------------------------------------


class FloatFile:
    """The floats of a .weights body, invented in read order (variances positive)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.floats: list[np.ndarray] = []

    def fread(self, n: int, kind: str = "", scale: float = 0.5) -> np.ndarray:
        if kind in ("variance", "scales"):
            a = self.rng.uniform(0.5, 1.5, n)
        else:
            a = self.rng.normal(0, scale, n)
        a = a.astype(np.float32)
        self.floats.append(a)
        return a.astype(np.float64)

    def body(self) -> bytes:
        return np.concatenate(self.floats).astype("<f4").tobytes()


def load_connected(f: FloatFile, inputs, outputs, bn, act, transpose):
    """parser.c load_connected_weights (+ transpose_matrix(weights, inputs, outputs))."""
    L = {"inputs": inputs, "outputs": outputs, "bn": bn, "act": act}
    L["biases"] = f.fread(outputs)
    w = f.fread(outputs * inputs, scale=1 / math.sqrt(inputs))
    if transpose:  # the file holds inputs x outputs; transposed[j*rows + i] = a[i*cols + j]
        t = np.zeros_like(w)
        for i in range(inputs):
            for j in range(outputs):
                t[j * inputs + i] = w[i * outputs + j]
        w = t
    L["weights"] = w
    if bn:
        L["scales"], L["mean"], L["variance"] = f.fread(outputs, "scales"), f.fread(outputs), f.fread(outputs, "variance")
    return L


def load_convolutional(f: FloatFile, c, n, bn, act):
    """parser.c load_convolutional_weights for crnn's 3x3 sublayers (groups 1, not flipped)."""
    L = {"c": c, "n": n, "bn": bn, "act": act}
    L["biases"] = f.fread(n)
    if bn:
        L["scales"], L["mean"], L["variance"] = f.fread(n, "scales"), f.fread(n), f.fread(n, "variance")
    L["weights"] = f.fread(c * n * 9, scale=1 / math.sqrt(9 * c))
    return L


# --------------------------------------------------------------------------------------
# the C forwards
# --------------------------------------------------------------------------------------


def activate(x, a):
    """activations.h"""
    if a == "linear":
        return x.copy()
    if a == "logistic":
        return 1.0 / (1.0 + np.exp(-x))
    if a == "tanh":
        return (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1)
    if a == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if a == "relu":
        return x * (x > 0)
    raise ValueError(a)


def batchnorm_inference(out, L, batch, n, spatial):
    """forward_batchnorm_layer at inference: normalize_cpu with the rolling statistics,
    scale_bias, add_bias (the connected/convolutional layer then activates)."""
    for b in range(batch):
        for f in range(n):
            s = slice((b * n + f) * spatial, (b * n + f + 1) * spatial)
            out[s] = (out[s] - L["mean"][f]) / np.sqrt(L["variance"][f] + EPS)
            out[s] *= L["scales"][f]
            out[s] += L["biases"][f]


def forward_connected(L, inp, batch):
    k, n = L["inputs"], L["outputs"]
    a = inp.reshape(batch, k)
    w = L["weights"].reshape(n, k)
    out = np.zeros(batch * n)
    for i in range(batch):  # gemm(0,1,m,n,k,1,a,k,b,k,1,c,n)
        for j in range(n):
            out[i * n + j] += np.dot(a[i], w[j])
    if L["bn"]:
        batchnorm_inference(out, L, batch, n, 1)
    else:
        for b in range(batch):
            out[b * n:(b + 1) * n] += L["biases"]
    return activate(out, L["act"])


def im2col(im, c, h, w):
    """im2col_cpu with ksize 3, stride 1, pad 1."""
    cols = np.zeros((c * 9, h * w))
    for ch in range(c * 9):
        w_off, h_off, c_im = ch % 3, (ch // 3) % 3, ch // 9
        for y in range(h):
            for x in range(w):
                r, q = h_off + y - 1, w_off + x - 1
                if 0 <= r < h and 0 <= q < w:
                    cols[ch, y * w + x] = im[(c_im * h + r) * w + q]
    return cols


def forward_convolutional(L, inp, batch, h, w):
    c, n = L["c"], L["n"]
    out = np.zeros(batch * n * h * w)
    wm = L["weights"].reshape(n, c * 9)
    for b in range(batch):
        cols = im2col(inp[b * c * h * w:(b + 1) * c * h * w], c, h, w)
        out[b * n * h * w:(b + 1) * n * h * w] = (wm @ cols).reshape(-1)  # gemm(0,0,m=n,n=h*w,k=c*9)
    if L["bn"]:
        batchnorm_inference(out, L, batch, n, h * w)
    else:
        for b in range(batch):
            for f in range(n):
                out[(b * n + f) * h * w:(b * n + f + 1) * h * w] += L["biases"][f]
    return activate(out, L["act"])


def c_rnn(x, rows, steps, s, sub):
    """forward_rnn_layer (CPU, net.train = 0): l.state is not advanced, so fill/copy happen in place."""
    batch, inputs, outputs = rows // steps, s["inputs"], s["outputs"]
    state = np.zeros(outputs * batch)
    out = np.zeros(rows * outputs)
    for i in range(steps):
        inp = x[i * inputs * batch:(i + 1) * inputs * batch]
        in_out = forward_connected(sub["input_layer"], inp, batch)
        self_out = forward_connected(sub["self_layer"], state, batch)
        new = state.copy() if s["shortcut"] else np.zeros(outputs * batch)
        new += in_out
        new += self_out
        state = new
        out[i * outputs * batch:(i + 1) * outputs * batch] = forward_connected(sub["output_layer"], state, batch)
    return out


def c_gru(x, rows, steps, s, sub):
    batch, inputs, outputs = rows // steps, s["inputs"], s["outputs"]
    state = np.zeros(outputs * batch)
    out = np.zeros(rows * outputs)
    for i in range(steps):
        inp = x[i * inputs * batch:(i + 1) * inputs * batch]
        wz, wr = forward_connected(sub["wz"], state, batch), forward_connected(sub["wr"], state, batch)
        uz, ur, uh = (forward_connected(sub[k], inp, batch) for k in ("uz", "ur", "uh"))
        z = activate(uz + wz, "logistic")
        r = activate(ur + wr, "logistic")
        forgot = state * r
        wh = forward_connected(sub["wh"], forgot, batch)
        hh = activate(uh + wh, "tanh" if s["tanh"] else "logistic")
        o = z * state + (1 - z) * hh  # weighted_sum_cpu(state, h, z, n, output)
        out[i * outputs * batch:(i + 1) * outputs * batch] = o
        state = o.copy()
    return out


def c_lstm(x, rows, steps, s, sub):
    batch, inputs, outputs = rows // steps, s["inputs"], s["outputs"]
    h, c = np.zeros(outputs * batch), np.zeros(outputs * batch)
    out = np.zeros(rows * outputs)
    for i in range(steps):
        inp = x[i * inputs * batch:(i + 1) * inputs * batch]
        w = {k: forward_connected(sub[k], h, batch) for k in ("wf", "wi", "wg", "wo")}
        u = {k: forward_connected(sub[k], inp, batch) for k in ("uf", "ui", "ug", "uo")}
        f = activate(w["wf"] + u["uf"], "logistic")
        ig = activate(w["wi"] + u["ui"], "logistic")
        g = activate(w["wg"] + u["ug"], "tanh")
        o = activate(w["wo"] + u["uo"], "logistic")
        temp = ig * g
        c = c * f
        c += temp
        h = activate(c, "tanh") * o
        out[i * outputs * batch:(i + 1) * outputs * batch] = h
    return out


def c_crnn(x, rows, steps, s, sub):
    batch, (c, hh, ww), hidden, outf = rows // steps, s["in_shape"], s["hidden"], s["outputs"]
    state = np.zeros(hidden * hh * ww * batch)
    out = np.zeros(rows * outf * hh * ww)
    n_in, n_out = c * hh * ww, outf * hh * ww
    hh, ww = ww, hh  # parse_crnn passes (params.w, params.h) to make_crnn_layer(batch, h, w, ...)
    for i in range(steps):
        inp = x[i * n_in * batch:(i + 1) * n_in * batch]
        in_out = forward_convolutional(sub["input_layer"], inp, batch, hh, ww)
        self_out = forward_convolutional(sub["self_layer"], state, batch, hh, ww)
        new = state.copy() if s["shortcut"] else np.zeros_like(state)
        new += in_out
        new += self_out
        state = new
        out[i * n_out * batch:(i + 1) * n_out * batch] = forward_convolutional(sub["output_layer"], state, batch, hh, ww)
    return out


def c_load(section, s, f: FloatFile, transpose):
    """parser.c load_weights_upto for one recurrent layer: its sublayers in file order."""
    bn, i, o = s["bn"], s.get("inputs"), s["outputs"]
    if section == "rnn":
        act = s["act"]
        return {"input_layer": load_connected(f, i, o, bn, act, transpose),
                "self_layer": load_connected(f, o, o, bn, act, transpose),
                "output_layer": load_connected(f, o, o, bn, act, transpose)}
    if section == "gru":  # wz, wr, wh, uz, ur, uh
        return {k: load_connected(f, o if k[0] == "w" else i, o, bn, "linear", transpose)
                for k in ("wz", "wr", "wh", "uz", "ur", "uh")}
    if section == "lstm":  # wi, wf, wo, wg, ui, uf, uo, ug
        return {k: load_connected(f, o if k[0] == "w" else i, o, bn, "linear", transpose)
                for k in ("wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug")}
    c, hid, act = s["in_shape"][0], s["hidden"], s["act"]
    return {"input_layer": load_convolutional(f, c, hid, bn, act),
            "self_layer": load_convolutional(f, hid, hid, bn, act),
            "output_layer": load_convolutional(f, hid, o, bn, act)}


C_FORWARD = {"rnn": c_rnn, "gru": c_gru, "lstm": c_lstm, "crnn": c_crnn}


def closed_form_floats(section, s) -> int:
    """Floats parser.c reads for the layer: connected = outputs + inputs*outputs (+3*outputs
    with BN); convolutional = n + c*n*9 (+3n with BN)."""
    bn, i, o = s["bn"], s.get("inputs"), s["outputs"]
    conn = lambda a, b: b + a * b + (3 * b if bn else 0)  # noqa: E731
    conv = lambda a, b: b + a * b * 9 + (3 * b if bn else 0)  # noqa: E731
    if section == "rnn":
        return conn(i, o) + 2 * conn(o, o)
    if section == "gru":
        return 3 * conn(i, o) + 3 * conn(o, o)
    if section == "lstm":
        return 4 * conn(i, o) + 4 * conn(o, o)
    c, hid = s["in_shape"][0], s["hidden"]
    return conv(c, hid) + conv(hid, hid) + conv(hid, o)


def closed_form_macs(section, s) -> int:
    """MACs per input row (one step of one sequence): the sublayers' gemms."""
    i, o = s.get("inputs"), s["outputs"]
    if section == "rnn":
        return i * o + o * o + o * o  # input·hidden + hidden·hidden + hidden·output, hidden = output
    if section == "gru":
        return 3 * i * o + 3 * o * o
    if section == "lstm":
        return 4 * i * o + 4 * o * o
    c, h, w = s["in_shape"]
    hid = s["hidden"]
    return h * w * 9 * (c * hid + hid * hid + hid * o)


# one case per section and option: (section, cfg options, spec for the port)
CASES = {
    "rnn-leaky": ("rnn", "output=6\nactivation=leaky\n", dict(outputs=6, act="leaky", bn=0, shortcut=0)),
    "rnn-bn-shortcut": ("rnn", "output=6\nhidden=6\nactivation=logistic\nbatch_normalize=1\nshortcut=1\n",
                        dict(outputs=6, act="logistic", bn=1, shortcut=1)),
    "gru": ("gru", "output=4\n", dict(outputs=4, bn=0, tanh=0)),
    "gru-bn-tanh": ("gru", "output=4\nbatch_normalize=1\ntanh=1\n", dict(outputs=4, bn=1, tanh=1)),
    "lstm": ("lstm", "output=4\n", dict(outputs=4, bn=0)),
    "lstm-bn": ("lstm", "output=3\nbatch_normalize=1\n", dict(outputs=3, bn=1)),
    "crnn": ("crnn", "output_filters=3\nhidden_filters=2\nactivation=leaky\n",
             dict(outputs=3, hidden=2, act="leaky", bn=0, shortcut=0)),
    "crnn-bn-shortcut": ("crnn", "output_filters=2\nhidden_filters=3\nactivation=tanh\nbatch_normalize=1\nshortcut=1\n",
                         dict(outputs=2, hidden=3, act="tanh", bn=1, shortcut=1)),
}
IMAGE = (2, 3, 4)  # crnn's input C x H x W
INPUTS = 5  # rnn/gru/lstm input floats


def case_net(name, steps):
    section, opts, spec = CASES[name]
    spec = dict(spec)
    if section == "crnn":
        c, h, w = IMAGE
        net_text = f"[net]\nchannels={c}\nheight={h}\nwidth={w}\ntime_steps={steps}\n"
        spec["in_shape"] = IMAGE
    else:
        net_text = f"[net]\ninputs={INPUTS}\ntime_steps={steps}\n"
        spec["inputs"] = INPUTS
    return section, spec, build_darknet(net_text + f"[{section}]\n{opts}", source=f"{name}.cfg")


@pytest.mark.parametrize("steps,rows", [(1, 3), (3, 6)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_darknets_c(name, steps, rows):
    section, spec, net = case_net(name, steps)
    header = WeightsHeader(1, 1001, 0, 5) if name.startswith(("rnn-leaky", "lstm-bn")) else WeightsHeader()
    f = FloatFile(seed=len(name) + steps)
    sub = c_load(section, spec, f, header.transpose)
    data = header.pack() + f.body()
    read_weights(net, io.BytesIO(data))
    layer = net.layers[0]
    assert layer.section == section and layer.steps == steps
    shape = IMAGE if section == "crnn" else (INPUTS, 1, 1)
    x = np.random.default_rng(steps).normal(0, 1, (rows, *shape))
    want = C_FORWARD[section](x.reshape(-1), rows, steps, spec, sub)
    net = net.double().eval()
    with torch.no_grad():
        got = net(torch.from_numpy(x))[0]
    # crnn: W x H, Darknet's swap (parse_crnn passes params.w as h): IMAGE is not square, so it shows
    out_shape = (spec["outputs"], IMAGE[2], IMAGE[1]) if section == "crnn" else (spec["outputs"], 1, 1)
    assert layer.out_shape == out_shape and tuple(got.shape) == (rows, *out_shape)
    np.testing.assert_allclose(got.reshape(-1).numpy(), want, rtol=1e-10, atol=1e-12)
    if steps > 1:  # step 0 starts from a zero state, later steps depend on the earlier ones
        b = rows // steps
        one = case_net(name, 1)[2]
        read_weights(one, io.BytesIO(data))
        one = one.double().eval()
        with torch.no_grad():
            first, last = one(torch.from_numpy(x[:b].copy()))[0], one(torch.from_numpy(x[-b:].copy()))[0]
        assert torch.equal(first, got[:b])
        assert (last - got[-b:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_weights_round_trip_and_closed_form_size(name, tmp_path):
    section, spec, net = case_net(name, 2)
    f = FloatFile(seed=7)
    c_load(section, spec, f, False)
    body = f.body()
    header = WeightsHeader(0, 2, 0, 123)
    src = header.pack() + body
    read_weights(net, io.BytesIO(src))
    assert len(src) == header.nbytes + 4 * closed_form_floats(section, spec) == weights_nbytes(net)
    path = tmp_path / "w.weights"
    assert write_weights(net, path) == len(src)
    assert path.read_bytes() == src  # write -> the same bytes
    back = case_net(name, 2)[2]
    read_weights(back, path)
    sa, sb = net.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", sorted(CASES))
def test_macs_closed_form(name):
    section, spec, net = case_net(name, 3)
    rows = 6
    rep = analyze(net, batch=rows, strict=True)
    (layer,) = rep.layers
    assert layer.macs == rows * closed_form_macs(section, spec)
    assert layer.params == sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,words", [
    ("[net]\ninputs=4\n[rnn]\noutput=0\n", ["layer 0 [rnn]", "output=0 must be at least 1"]),
    ("[net]\ninputs=4\n[rnn]\noutput=8\nhidden=0\n", ["layer 0 [rnn]", "hidden=0", "set hidden=8"]),
    ("[net]\ninputs=4\n[rnn]\noutput=8\nhidden=16\n", ["hidden=16 differs from output=8", "pjreddie"]),
    ("[net]\ninputs=4\n[gru]\noutput=-2\n", ["layer 0 [gru]", "output=-2 must be at least 1"]),
    ("[net]\ninputs=4\n[lstm]\noutput=0\n", ["layer 0 [lstm]", "output=0 must be at least 1"]),
    ("[net]\ninputs=4\ntime_steps=0\n[lstm]\noutput=3\n", ["[net]", "time_steps=0 must be at least 1"]),
    ("[net]\nchannels=2\nheight=3\nwidth=3\n[crnn]\nhidden_filters=0\noutput_filters=2\n",
     ["layer 0 [crnn]", "hidden_filters=0 must be at least 1"]),
    ("[net]\nchannels=2\nheight=3\nwidth=3\n[crnn]\noutput=4\nhidden=4\n",
     ["layer 0 [crnn]", "AlexeyAB", "output_filters=4"]),
    ("[net]\nchannels=2\nheight=3\nwidth=3\n[crnn]\noutput_filters=2\nsize=1\n", ["size=1", "size=3 stride=1 pad=1"]),
])
def test_bad_options_one_line_errors(text, words):
    with pytest.raises(SurgeryError) as e:
        build_darknet(text, source="bad.cfg")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.cfg"), msg
    for w in words:
        assert w in msg, (w, msg)


def test_batch_not_a_multiple_of_time_steps():
    net = build_darknet("[net]\ninputs=4\ntime_steps=3\n[gru]\noutput=2\n", source="g.cfg")
    with pytest.raises(SurgeryError) as e:
        net(torch.randn(4, 4, 1, 1))
    msg = str(e.value)
    assert "layer 0 [gru]" in msg and "batch 4 is not a multiple of [net] time_steps=3" in msg and "\n" not in msg
    with pytest.raises(SurgeryError, match="time_steps=3"):
        analyze(net, batch=2)


# --------------------------------------------------------------------------------------
# the cfg files and the console script
# --------------------------------------------------------------------------------------


def _sections(path):
    from zoo.darknet import parse_cfg

    return parse_cfg(path.read_text())


def _cfg_macs(path) -> list[int]:
    """Per-layer MACs of a cfg of recurrent/connected/conv/... layers at one row, from the closed forms."""
    blocks = _sections(path)
    net = blocks[0]
    shape = (int(net.get("channels", 0)), int(net.get("height", 0)), int(net.get("width", 0)))
    if not all(shape):
        shape = (int(net["inputs"]), 1, 1)
    out = []
    for b in blocks[1:]:
        t, (c, h, w) = b["type"], shape
        if t in ("rnn", "gru", "lstm"):
            o = int(b["output"])
            out.append(closed_form_macs(t, dict(inputs=c * h * w, outputs=o)))
            shape = (o, 1, 1)
        elif t == "crnn":
            o = int(b["output_filters"])
            out.append(closed_form_macs(t, dict(in_shape=shape, hidden=int(b["hidden_filters"]), outputs=o)))
            shape = (o, w, h)
        elif t == "connected":
            o = int(b["output"])
            out.append(c * h * w * o)
            shape = (o, 1, 1)
        elif t == "convolutional":
            n, k, s = int(b["filters"]), int(b["size"]), int(b["stride"])
            p = k // 2 if int(b.get("pad", 0)) else 0
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            out.append(n * oh * ow * c * k * k)
            shape = (n, oh, ow)
        elif t == "avgpool":
            out.append(0)
            shape = (c, 1, 1)
        else:
            out.append(0)
    return out


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "crnn"])
def test_cli_layers_and_flops_closed_form(name):
    cfg = DATA / f"{name}.cfg"
    want = _cfg_macs(cfg)
    r = run_cli("layers", cfg, "--json", "--strict")
    assert r.code == 0, r.err
    d = r.json()
    assert [l["macs"] for l in d["layers"]] == want
    assert [l["type"] for l in d["layers"]] == [b["type"] for b in _sections(cfg)[1:]]
    r = run_cli("flops", cfg, "--strict", "--json")
    assert r.code == 0, r.err
    assert r.json()["totals"]["macs"] == sum(want) and not r.json()["uncounted"]


def test_pjreddie_rnn_cfg_numbers():
    """cfg/rnn.cfg: 256 inputs, three [rnn] of 1024 with BN, [connected] 256: the closed forms by hand."""
    want = [256 * 1024 + 2 * 1024 * 1024, 3 * 1024 * 1024, 3 * 1024 * 1024, 1024 * 256, 0]
    assert _cfg_macs(DATA / "rnn.cfg") == want
    with torch.device("meta"):
        net = build_darknet((DATA / "rnn.cfg").read_text())
    bn_conn = lambda a, b: a * b + 2 * b  # noqa: E731 weights + BN scale and bias (no fc bias)
    assert sum(p.numel() for p in net.layers[0].parameters()) == bn_conn(256, 1024) + 2 * bn_conn(1024, 1024)
    # .weights: 20-byte header; 3 [rnn] x 3 connected sublayers of biases, weights, scales, mean,
    # variance (one 256 -> 1024, eight 1024 -> 1024); the [connected] 1024 -> 256 without BN
    floats = (1024 + 256 * 1024 + 3 * 1024) + 8 * (1024 + 1024 * 1024 + 3 * 1024) + (256 + 1024 * 256)
    assert weights_nbytes(net, WeightsHeader()) == 20 + 4 * floats


def test_cli_time_steps_batch(tmp_path):
    cfg = tmp_path / "steps.cfg"
    cfg.write_text("[net]\ninputs=6\ntime_steps=3\n\n[lstm]\noutput=5\n\n[connected]\noutput=2\nactivation=linear\n")
    r = run_cli("flops", cfg, "--batch", "6", "--strict", "--json")
    assert r.code == 0, r.err
    assert r.json()["totals"]["macs"] == 6 * (4 * 6 * 5 + 4 * 5 * 5 + 5 * 2)
    r = run_cli("flops", cfg, "--batch", "4", "--strict", "--json")
    assert r.code == 2 and r.out == ""
    err = r.err.strip()
    assert "\n" not in err and "layer 0 [lstm]" in err and "not a multiple of [net] time_steps=3" in err, err


def test_time_steps_net_defaults_to_one_sequence(tmp_path):
    """Without --batch a [net] time_steps=T net is counted, shown and exported on T rows (one
    sequence, batch_unit = T): info, layers and flops run as typed; export's dynamic batch verifies."""
    cfg = tmp_path / "steps.cfg"
    cfg.write_text("[net]\ninputs=6\ntime_steps=3\n\n[lstm]\noutput=5\n\n[connected]\noutput=2\nactivation=linear\n")
    per_row = 4 * 6 * 5 + 4 * 5 * 5 + 5 * 2
    assert sio.load(str(cfg)).batch_unit == 3
    r = run_cli("flops", cfg, "--strict", "--json")
    assert r.code == 0, r.err
    assert r.json()["batch"] == 3 and r.json()["totals"]["macs"] == 3 * per_row
    r = run_cli("layers", cfg, "--json")
    assert r.code == 0 and r.json()["batch"] == 3, r.err
    r = run_cli("info", cfg)
    assert r.code == 0 and "2x1x1" in r.out, r.err
    r = run_cli("export", cfg, "--onnx", tmp_path / "steps.onnx", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    onnx = r.json()["onnx"]
    assert onnx["batch"] == "dynamic" and onnx["verify"]["max_rel"] <= onnx["verify"]["rtol"]


@pytest.mark.parametrize("name", ["rnn", "lstm", "crnn"])
def test_fuse_folds_the_sublayers_batchnorms(name):
    """`surgery fold`'s Darknet protocol reaches the connected/convolutional sublayers: every
    BatchNorm folds (eval semantics), the outputs stay, and the folded net's .weights holds the
    batch_normalize=0 layout (biases + weights, no statistics), which reads back identically."""
    torch.manual_seed(0)
    net = build_darknet((DATA / f"{name}.cfg").read_text()).eval()
    bns = [m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    assert bns
    with torch.no_grad():
        for bn in bns:  # statistics far from the identity, so a skipped fold shows
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    fused = net.fuse().eval()
    assert not [m for m in fused.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    assert all(b.get("batch_normalize", "0") == "0" for b in fused.blocks[1:])
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        for a, b in zip(net(x), fused(x)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    per_unit = sum(m.weight.numel() + m.bias.numel() for m in fused.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    assert weights_nbytes(fused, WeightsHeader()) == 20 + 4 * per_unit
    buf = io.BytesIO()
    write_weights(fused, buf)
    back = build_darknet(fused.cfg_text())
    read_weights(back, io.BytesIO(buf.getvalue()))
    for k, v in fused.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_fuse_without_batchnorm_is_a_no_op():
    net = build_darknet((DATA / "gru.cfg").read_text())
    assert net.fuse() is net
