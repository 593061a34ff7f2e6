"""pjreddie's remaining sections ([deconvolutional], [logistic], [l2norm], [normalization]/[lrn],
[batchnorm], [iseg]) and options ([convolutional] binary=/xnor=, dontload=/numload=/dontsave=,
[region] tree=/map=).

Every forward is checked against a loop-for-loop numpy port of the C function written here
(normalization_layer.c, blas.c, deconvolutional_layer.c + col2im.c, convolutional_layer.c +
im2col.c, iseg_layer.c, batchnorm_layer.c), not against the module's own maths. ``.weights``
files are checked byte by byte against parser.c's order, with sizes written out per layer.
"""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from zoo.darknet import build_darknet, load_darknet, read_weights, weights_nbytes, write_weights
from zoo.darknet.weights import load_weights, weights_io_problem

DATA = Path(__file__).resolve().parent / "data" / "darknet"
HEADER = 20  # int32 major, minor, revision + uint64 seen (version 0.2)


def _net(text: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_darknet(text).eval()


def _randomize(net, seed: int = 1) -> None:
    """Every float tensor random (variances positive), so a tensor read into the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point() or name.endswith("norm.bias"):  # [batchnorm] biases: never stored
                continue
            v = torch.randn(t.shape, generator=g)
            t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v)


# ------------------------------------------------------------------------------------ C ports


def c_normalization(x: np.ndarray, size: int, alpha: float, beta: float, kappa: float) -> np.ndarray:
    """normalization_layer.c forward_normalization_layer, loop for loop, in float32."""
    x = x.astype(np.float32)
    b_, c_, h_, w_ = x.shape
    out = np.empty_like(x)
    alpha, beta, kappa = np.float32(alpha), np.float32(beta), np.float32(kappa)
    for b in range(b_):
        squared = x[b] ** 2  # pow_cpu
        norms = np.empty_like(squared)
        norms[0] = kappa  # const_cpu(w*h, kappa, norms)
        for k in range(size // 2):
            norms[0] += alpha * squared[k]  # axpy_cpu on the first plane only
        for k in range(1, c_):
            norms[k] = norms[k - 1]
            prev = k - ((size - 1) // 2) - 1
            nxt = k + size // 2
            if prev >= 0:
                norms[k] += -alpha * squared[prev]
            if nxt < c_:
                norms[k] += alpha * squared[nxt]
        out[b] = norms ** -beta * x[b]  # pow_cpu(norms, -beta) then mul_cpu(input)
    return out


def c_l2normalize(x: np.ndarray) -> np.ndarray:
    """blas.c l2normalize_cpu (l2norm_layer.c copies the input first)."""
    b_, c_, h_, w_ = x.shape
    x = x.astype(np.float32).reshape(b_, c_, h_ * w_).copy()
    for b in range(b_):
        for i in range(h_ * w_):
            s = np.float32(0)
            for f in range(c_):
                s += x[b, f, i] ** 2
            s = np.sqrt(s)
            for f in range(c_):
                x[b, f, i] /= s
    return x.reshape(b_, c_, h_, w_)


def c_im2col(im: np.ndarray, ksize: int, stride: int, pad: int) -> np.ndarray:
    """im2col.c im2col_cpu for one image (channels, height, width)."""
    channels, height, width = im.shape
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    col = np.zeros((channels * ksize * ksize, height_col * width_col), np.float32)
    for c in range(channels * ksize * ksize):
        w_off, h_off, c_im = c % ksize, (c // ksize) % ksize, c // ksize // ksize
        for h in range(height_col):
            for w in range(width_col):
                row, cl = h_off + h * stride - pad, w_off + w * stride - pad
                if 0 <= row < height and 0 <= cl < width:
                    col[c, h * width_col + w] = im[c_im, row, cl]
    return col


def c_col2im(col: np.ndarray, channels: int, height: int, width: int, ksize: int, stride: int, pad: int) -> np.ndarray:
    """col2im.c col2im_cpu: scatter-add the columns into a zeroed (channels, height, width) image."""
    im = np.zeros((channels, height, width), np.float64)
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    for c in range(channels * ksize * ksize):
        w_off, h_off, c_im = c % ksize, (c // ksize) % ksize, c // ksize // ksize
        for h in range(height_col):
            for w in range(width_col):
                row, cl = h_off + h * stride - pad, w_off + w * stride - pad  # col2im_add_pixel
                if 0 <= row < height and 0 <= cl < width:
                    im[c_im, row, cl] += col[c * height_col * width_col + h * width_col + w]
    return im


def c_batchnorm(x, scales, mean, variance, biases):
    """forward_batchnorm_layer at inference: blas.c normalize_cpu (sqrt(var) + .000001f), scale_bias, add_bias."""
    s = lambda v: np.asarray(v, np.float64)[None, :, None, None]  # noqa: E731
    return (x - s(mean)) / (np.sqrt(s(variance)) + 1e-6) * s(scales) + s(biases)


def c_deconvolutional(x, weights, n, size, stride, pad):
    """deconvolutional_layer.c forward_deconvolutional_layer before the bias/BN: per image
    gemm_cpu(1,0, m=size*size*n, n=h*w, k=c, weights, input) then col2im_cpu into the output."""
    b_, c_, h_, w_ = x.shape
    out_h, out_w = (h_ - 1) * stride + size - 2 * pad, (w_ - 1) * stride + size - 2 * pad
    a = weights.reshape(c_, size * size * n).astype(np.float64)  # K x M, lda = m (transposed)
    out = np.zeros((b_, n, out_h, out_w))
    for b in range(b_):
        col = a.T @ x[b].reshape(c_, h_ * w_)  # C[i][j] += A[k][i] * B[k][j]
        out[b] = c_col2im(col.reshape(-1), n, out_h, out_w, size, stride, pad)
    return out


def c_binarize_weights(weights: np.ndarray, n: int) -> np.ndarray:
    """convolutional_layer.c binarize_weights(weights, n, size, binary)."""
    w = weights.reshape(n, -1).astype(np.float32)
    out = np.empty_like(w)
    for f in range(n):
        mean = np.float32(0)
        for i in range(w.shape[1]):
            mean += abs(w[f, i])
        mean = mean / w.shape[1]
        for i in range(w.shape[1]):
            out[f, i] = mean if w[f, i] > 0 else -mean
    return out.reshape(weights.shape)


def c_convolutional(x, weights, n, size, stride, pad, *, binary=False, xnor=False):
    """forward_convolutional_layer (groups=1) before the bias/BN: xnor binarizes the weights and
    the input (binarize_cpu: > 0 -> 1, else -1); binary binarizes the weights, as the GPU forward
    does (the CPU forward skips that for binary=1: surgery follows the GPU there)."""
    if xnor or binary:
        weights = c_binarize_weights(weights, n)
    if xnor:
        x = np.where(x > 0, 1.0, -1.0).astype(np.float32)
    outs = []
    for b in range(x.shape[0]):
        col = c_im2col(x[b], size, stride, pad)
        outs.append(weights.reshape(n, -1).astype(np.float64) @ col)  # gemm(0,0,m,n,k,...)
    oh = (x.shape[2] + 2 * pad - size) // stride + 1
    return np.stack(outs).reshape(x.shape[0], n, oh, -1)


def c_logistic(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))  # activations.h logistic_activate


def c_iseg(x: np.ndarray, classes: int) -> np.ndarray:
    """forward_iseg_layer's output: memcpy, then the logistic over the first classes*w*h values of each image."""
    out = x.astype(np.float64).copy()
    b_, c_, h_, w_ = x.shape
    flat = out.reshape(b_, c_ * h_ * w_)
    for b in range(b_):
        flat[b, :classes * h_ * w_] = c_logistic(flat[b, :classes * h_ * w_])
    return flat.reshape(x.shape)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ------------------------------------------------------------------------------------ forwards

NET = "[net]\nchannels={c}\nheight={h}\nwidth={w}\n"


@pytest.mark.parametrize("c, size", [(8, 5), (8, 1), (8, 2), (8, 4), (3, 7), (6, 3), (2, 4), (1, 3)])
def test_normalization_is_darknets_running_window(c, size):
    alpha, beta, kappa = 0.05, 0.75, 2.0  # a large alpha: the window's quirks matter
    net = _net(NET.format(c=c, h=3, w=4) + f"[lrn]\nsize={size}\nalpha={alpha}\nbeta={beta}\nkappa={kappa}\n")
    assert net.layers[0].section == "normalization" and net.layers[0].out_shape == (c, 3, 4)
    x = torch.randn(2, c, 3, 4) * 2
    want = c_normalization(x.numpy(), size, alpha, beta, kappa)
    got = net(x)[0]
    np.testing.assert_allclose(_np(got), want, rtol=2e-5, atol=1e-6, equal_nan=False)
    if c > size // 2 >= 1:  # the test can tell: the textbook window (channel size/2 included) differs
        sq = x.double() ** 2
        lo, hi = (size - 1) // 2, size // 2
        win = torch.stack([sq[:, max(0, k - lo):k + hi + 1].sum(1) for k in range(c)], 1)
        textbook = x.double() * (kappa + alpha * win) ** -beta
        assert np.abs(textbook.numpy() - want).max() > 1e-3


def test_normalization_defaults_and_size_refusal():
    lay = _net(NET.format(c=4, h=2, w=2) + "[normalization]\n").layers[0]
    assert (lay.size, lay.alpha, lay.beta, lay.kappa) == (5, 0.0001, 0.75, 1.0)  # parse_normalization defaults
    _net(NET.format(c=2, h=2, w=2) + "[lrn]\nsize=5\n")  # size/2 = 2 channels read: fits
    with pytest.raises(SurgeryError, match=r"layer 0 \[normalization\]: size=6 reads channels 0..2 but the input has 2"):
        _net(NET.format(c=2, h=2, w=2) + "[lrn]\nsize=6\n")


def test_l2norm_is_l2normalize_cpu():
    net = _net(NET.format(c=6, h=3, w=3) + "[l2norm]\n")
    x = torch.randn(2, 6, 3, 3)
    np.testing.assert_allclose(_np(net(x)[0]), c_l2normalize(x.numpy()), rtol=1e-6, atol=1e-7)
    assert torch.isnan(net(torch.zeros(1, 6, 3, 3))[0]).all()  # 0/0 as in Darknet: no epsilon


def test_logistic_and_iseg_outputs():
    net = _net(NET.format(c=5, h=3, w=2) + "[logistic]\n[iseg]\nclasses=2\nids=3\n")
    assert [l.out_shape for l in net.layers] == [(5, 3, 2), (5, 3, 2)]
    x = torch.randn(2, 5, 3, 2) * 3
    with torch.no_grad():
        y = net.layers[0](x)
        np.testing.assert_allclose(_np(y), c_logistic(x.numpy()), rtol=1e-6)
        np.testing.assert_allclose(_np(net.layers[1](x)), c_iseg(x.numpy(), 2), rtol=1e-6)
    with pytest.raises(SurgeryError, match=r"\[iseg\]: input has 5 channels but classes \+ ids = 52"):
        _net(NET.format(c=5, h=3, w=2) + "[iseg]\n")  # defaults classes=20, ids=32


def test_batchnorm_layer_is_darknets_and_has_no_biases():
    net = _net(NET.format(c=4, h=3, w=3) + "[batchnorm]\n")
    _randomize(net)
    norm = net.layers[0].norm
    assert torch.equal(norm.bias, torch.zeros(4)) and not norm.bias.requires_grad
    x = torch.randn(2, 4, 3, 3)
    want = c_batchnorm(x.numpy(), _np(norm.weight), _np(norm.running_mean), _np(norm.running_var), np.zeros(4))
    # the builder's eps (sqrt(var + 1e-5)) against pjreddie's CPU (sqrt(var) + 1e-6): see cfg.BN_EPS
    np.testing.assert_allclose(_np(net(x)[0]), want, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("size, stride, pad_line, pad", [(4, 2, "padding=1", 1), (2, 2, "", 0), (3, 1, "pad=1", 1),
                                                         (3, 2, "pad=1", 1), (1, 3, "padding=1", 1), (4, 3, "pad=1", 2)])
def test_deconvolutional_is_gemm_then_col2im(size, stride, pad_line, pad):
    c, n, h, w = 3, 4, 5, 4
    net = _net(NET.format(c=c, h=h, w=w) + f"[deconv]\nfilters={n}\nsize={size}\nstride={stride}\n{pad_line}\n"
               "activation=linear\n")
    lay = net.layers[0]
    assert lay.section == "deconvolutional"
    assert lay.out_shape == (n, (h - 1) * stride + size - 2 * pad, (w - 1) * stride + size - 2 * pad)
    _randomize(net)
    x = torch.randn(2, c, h, w)
    want = c_deconvolutional(x.numpy(), lay.conv.weight.detach().numpy(), n, size, stride, pad)
    want += _np(lay.conv.bias)[None, :, None, None]  # add_bias
    np.testing.assert_allclose(_np(net(x)[0]), want, rtol=1e-5, atol=1e-5)


def test_deconvolutional_batchnorm_activation_and_fold():
    net = _net(NET.format(c=3, h=4, w=4) + "[deconvolutional]\nbatch_normalize=1\nfilters=5\nsize=2\nstride=2\n"
               "activation=leaky\n")
    lay = net.layers[0]
    assert lay.conv.bias is None and lay.out_shape == (5, 8, 8)  # default activation would be logistic
    _randomize(net)
    x = torch.randn(2, 3, 4, 4)
    bn = lay.bn
    pre = c_batchnorm(c_deconvolutional(x.numpy(), lay.conv.weight.detach().numpy(), 5, 2, 2, 0), _np(bn.weight),
                      _np(bn.running_mean), _np(bn.running_var), _np(bn.bias))
    want = np.where(pre > 0, pre, 0.1 * pre)
    y = net(x)[0]
    np.testing.assert_allclose(_np(y), want, rtol=1e-4, atol=1e-5)
    fused = net.fuse().eval()  # the BN folds into the transposed convolution (out channels on its dim 1)
    assert fused.layers[0].bn is None and "batch_normalize=0" in fused.cfg_text()
    torch.testing.assert_close(fused(x)[0], y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", ["binary", "xnor"])
def test_binary_and_xnor_convolutions(option):
    c, n = 3, 4
    net = _net(NET.format(c=c, h=5, w=5) + f"[convolutional]\n{option}=1\nfilters={n}\nsize=3\nstride=2\npad=1\n"
               "activation=linear\n")
    lay = net.layers[0]
    _randomize(net)
    x = torch.randn(2, c, 5, 5)
    x[0, 0, 0, 0] = 0.0  # binarize_cpu sends an exact 0 to -1
    want = c_convolutional(x.numpy(), lay.conv.weight.detach().numpy(), n, 3, 2, 1, **{option: True})
    want += _np(lay.conv.bias)[None, :, None, None]
    np.testing.assert_allclose(_np(net(x)[0]), want, rtol=1e-5, atol=1e-5)
    plain = c_convolutional(x.numpy(), lay.conv.weight.detach().numpy(), n, 3, 2, 1) + _np(lay.conv.bias)[None, :, None, None]
    assert np.abs(plain - want).max() > 0.1  # binarizing matters, so the test can tell
    # the stored weights stay real-valued (Darknet saves l.weights, not the binary copy)
    assert len(torch.unique(lay.conv.weight[0])) == 27


def test_binary_layers_keep_their_batchnorm_when_folded():
    fused = load_darknet(DATA / "xnor.cfg").fuse()
    assert [l.bn is not None for l in fused.layers if l.section == "convolutional"] == [False, True, True, False]


# ------------------------------------------------------------------------------------ .weights


def _floats(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<f4", offset=HEADER)


def test_deconv_and_batchnorm_weights_in_parser_order():
    text = (NET.format(c=3, h=4, w=4) + "[deconv]\nbatch_normalize=1\nfilters=5\nsize=2\nstride=2\n"
            "[batchnorm]\n[deconv]\nfilters=2\nsize=3\nstride=1\n")
    net = _net(text)
    _randomize(net)
    buf = io.BytesIO()
    n = write_weights(net, buf)
    # save_convolutional_weights: 5 biases, 5 scales, 5 means, 5 variances, 3*5*2*2 weights;
    # save_batchnorm_weights: 5 scales, 5 means, 5 variances; then 2 biases and 5*2*3*3 weights
    assert n == HEADER + 4 * ((4 * 5 + 3 * 5 * 4) + 3 * 5 + (2 + 5 * 2 * 9)) == weights_nbytes(net)
    f = _floats(buf.getvalue())
    d0, b1, d2 = net.layers
    want = [d0.bn.bias, d0.bn.weight, d0.bn.running_mean, d0.bn.running_var, d0.conv.weight,  # (c, n, s, s)
            b1.norm.weight, b1.norm.running_mean, b1.norm.running_var, d2.conv.bias, d2.conv.weight]
    assert np.array_equal(f, np.concatenate([t.detach().numpy().reshape(-1) for t in want]))
    back = _net(text, seed=5)
    read_weights(back, io.BytesIO(buf.getvalue()))
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


@pytest.mark.parametrize("cfg, floats", [
    # conv BN 16 (4*16 + 16*3*9), conv BN 32 (4*32 + 32*16*9), deconv BN 16 (4*16 + 32*16*4*4),
    # deconv 8 (8 + 32*8*2*2), conv 7 (7 + 7*8)
    ("deconv-iseg.cfg", (4 * 16 + 16 * 3 * 9) + (4 * 32 + 32 * 16 * 9) + (4 * 16 + 32 * 16 * 16) + (8 + 32 * 8 * 4) + (7 + 7 * 8)),
    # conv 16 (16 + 16*3*25), conv 24 (24 + 24*16*9), batchnorm 24 (3*24), conv 32 (32 + 32*24*9), connected (10 + 10*32)
    ("lrn.cfg", (16 + 16 * 3 * 25) + (24 + 24 * 16 * 9) + 3 * 24 + (32 + 32 * 24 * 9) + (10 + 10 * 32)),
    # conv BN 16, binary conv BN 32, xnor conv BN 32, conv 10
    ("xnor.cfg", (4 * 16 + 16 * 3 * 9) + (4 * 32 + 32 * 16 * 9) + (4 * 32 + 32 * 32 * 9) + (10 + 10 * 32)),
])
def test_weights_round_trip_new_cfgs(cfg, floats, tmp_path):
    net = load_darknet(DATA / cfg)
    _randomize(net)
    path = tmp_path / "w.weights"
    assert write_weights(net, path) == HEADER + 4 * floats == path.stat().st_size
    back = load_darknet(DATA / cfg, path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = torch.randn(1, *net.input_shape)
    with torch.no_grad():  # N(0, 1) weights drive [lrn] norms negative: NaN there, as in Darknet
        torch.testing.assert_close(net.eval()(x)[0], back.eval()(x)[0], rtol=0, atol=0, equal_nan=True)


IO_CFG = NET.format(c=2, h=4, w=4) + (
    "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=1\nnumload=2\n"  # 0: reads 2 of 3 filters
    "[convolutional]\nfilters=2\nsize=1\ndontload=1\n"  # 1: reads nothing
    "[deconvolutional]\nfilters=2\nsize=2\nstride=2\nnumload=1\n"  # 2: 1 bias, the first 2*1*2*2 weights
    "[batchnorm]\n"  # 3: scales, means, variances
    "[convolutional]\nbatch_normalize=1\nfilters=1\nsize=1\ndontloadscales=1\n"  # 4: bias, weights
)


def test_hand_written_weights_for_numload_dontload_dontloadscales():
    net = _net(IO_CFG)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    vals = np.arange(1, 31, dtype="<f4")  # 30 floats, each read exactly once
    data = struct.pack("<3iQ", 0, 2, 0, 7) + vals.tobytes()
    rep = load_weights(net, io.BytesIO(data))
    assert rep.header.seen == 7 and rep.cutoff is None
    s = net.state_dict()

    def check(key, got_values, n):  # the first n values from the file, the rest as built
        t = s[key].reshape(-1)
        assert t[:n].tolist() == got_values, key
        assert torch.equal(t[n:], before[key].reshape(-1)[n:]), key

    # layer 0, load_convolutional_weights with l.n = numload = 2: biases, scales, means, variances, 2*2 weights
    check("layers.0.bn.bias", [1, 2], 2)
    check("layers.0.bn.weight", [3, 4], 2)
    check("layers.0.bn.running_mean", [5, 6], 2)
    check("layers.0.bn.running_var", [7, 8], 2)
    check("layers.0.conv.weight", [9, 10, 11, 12], 4)
    for k in ("layers.1.conv.weight", "layers.1.conv.bias"):  # dontload: untouched
        assert torch.equal(s[k], before[k])
    # layer 2: 1 bias, then c/groups*numload*size*size = 2*1*2*2 weights: a flat prefix of (c, n, s, s)
    check("layers.2.conv.bias", [13], 1)
    check("layers.2.conv.weight", list(range(14, 22)), 8)
    assert s["layers.2.conv.weight"][0].reshape(-1).tolist() == list(range(14, 22))  # input channel 0, both filters
    # layer 3: load_batchnorm_weights
    assert s["layers.3.norm.weight"].tolist() == [22, 23]
    assert s["layers.3.norm.running_mean"].tolist() == [24, 25]
    assert s["layers.3.norm.running_var"].tolist() == [26, 27]
    # layer 4: dontloadscales: the bias, then the weights; BN scales and statistics untouched
    assert s["layers.4.bn.bias"].tolist() == [28] and s["layers.4.conv.weight"].reshape(-1).tolist() == [29, 30]
    for k in ("layers.4.bn.weight", "layers.4.bn.running_mean", "layers.4.bn.running_var"):
        assert torch.equal(s[k], before[k])
    assert weights_nbytes(net) == len(data)
    with pytest.raises(SurgeryError, match="1 bytes left over|truncated"):
        load_weights(_net(IO_CFG), io.BytesIO(data[:-4]))


def test_dontsave_and_what_save_writes():
    net = _net(IO_CFG.replace("dontload=1", "dontsave=1"))
    _randomize(net)
    buf = io.BytesIO()
    write_weights(net, buf)
    f = _floats(buf.getvalue())
    s = net.state_dict()
    # save_weights_upto: every filter (numload is a load option), layer 1 skipped, BN statistics
    # written despite dontloadscales
    want = [s[f"layers.0.{k}"] for k in ("bn.bias", "bn.weight", "bn.running_mean", "bn.running_var", "conv.weight")]
    want += [s["layers.2.conv.bias"], s["layers.2.conv.weight"]]
    want += [s[f"layers.3.norm.{k}"] for k in ("weight", "running_mean", "running_var")]
    want += [s[f"layers.4.{k}"] for k in ("bn.bias", "bn.weight", "bn.running_mean", "bn.running_var", "conv.weight")]
    assert np.array_equal(f, np.concatenate([t.numpy().reshape(-1) for t in want]))
    assert len(f) == (4 * 3 + 3 * 2) + (2 + 2 * 2 * 4) + 3 * 2 + (4 + 2) == (len(buf.getvalue()) - HEADER) // 4
    assert weights_nbytes(net, save=True) == len(buf.getvalue())
    assert "layer 0 [convolutional] has numload=2" in weights_io_problem(net)
    assert weights_io_problem(_net(IO_CFG.replace("numload=2", "numload=3").replace("numload=1", "")
                                   .replace("dontload=1", "dontload=1\ndontsave=1")
                                   .replace("dontloadscales=1", "dontloadscales=0"))) is None


def test_numload_out_of_range_is_refused():
    with pytest.raises(SurgeryError, match=r"layer 0 \[convolutional\]: numload=4 must be between 0 and filters=3"):
        _net(NET.format(c=2, h=2, w=2) + "[convolutional]\nfilters=3\nnumload=4\n")
    with pytest.raises(SurgeryError, match=r"layer 0 \[deconvolutional\]: numload=-1"):
        _net(NET.format(c=2, h=2, w=2) + "[deconv]\nfilters=3\nnumload=-1\n")


def test_export_refuses_a_cfg_darknet_would_not_read_back(tmp_path):
    cfg = tmp_path / "io.cfg"
    cfg.write_text(IO_CFG)
    r = run_cli("export", str(cfg), "--darknet", str(tmp_path / "out.cfg"), cwd=tmp_path)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "numload=2" in r.err and "read" in r.err
    assert not (tmp_path / "out.cfg").exists() and not (tmp_path / "out.weights").exists()


# ------------------------------------------------------------------------------------ [region] tree= / map=


def test_yolo9000_region_tree_and_map():
    with torch.device("meta"):  # 28269 filters: shapes only
        net = load_darknet(DATA / "yolo9000.cfg")
    region = net.layers[-1]
    assert region.section == "region" and region.out_shape == (3 * (9418 + 4 + 1), 17, 17)
    assert sum(region.tree) == 9418 == region.classes  # one 9k.tree node per class
    assert len(region.map) == 80 and region.map[:3] == (5177, 3768, 3802)  # coco9k.map
    dark = net.cfg_text(darknet=True)
    assert "tree=data/9k.tree" in dark and "map=data/coco9k.map" in dark and "surgery_" not in dark
    assert "surgery_tree_groups=" in net.cfg_text() and "surgery_map=5177,3768" in net.cfg_text()


def _region_dir(tmp_path, tree=True, map_=True) -> Path:
    shutil.copy(DATA / "region-tree.cfg", tmp_path)
    if tree:
        shutil.copy(DATA / "tiny.tree", tmp_path)
    if map_:
        shutil.copy(DATA / "tiny.map", tmp_path)
    return tmp_path / "region-tree.cfg"


def test_region_tree_checkpoint_reloads_without_the_files(tmp_path, monkeypatch):
    cfg = _region_dir(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # found next to the cfg
    net = sio.load(str(cfg))
    region = net.module.layers[2]
    assert region.tree == (2, 3, 2, 2) and region.map == (2, 3, 7, 5)
    ckpt = sio.save(net, tmp_path / "net.pt")
    (tmp_path / "tiny.tree").unlink()
    (tmp_path / "tiny.map").unlink()
    back = sio.load(str(ckpt))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.module.eval()(x)[0], back.module.eval()(x)[0])  # raw predictions, tree or not
    assert back.module.layers[2].tree == (2, 3, 2, 2) and back.module.layers[2].map == (2, 3, 7, 5)


def test_export_darknet_keeps_region_tree_and_map_lines(tmp_path):
    cfg = _region_dir(tmp_path)
    r = run_cli("export", str(cfg), "--darknet", str(tmp_path / "out.cfg"), cwd=tmp_path)
    assert r.code == 0, r.err
    text = (tmp_path / "out.cfg").read_text()
    assert "tree=tiny.tree" in text and "map=tiny.map" in text and "surgery_" not in text
    back = load_darknet(tmp_path / "out.cfg", tmp_path / "out.weights")
    assert back.layers[2].tree == (2, 3, 2, 2)


@pytest.mark.parametrize("edit, words", [
    (("classes=9", "classes=8"), None),  # 28 channels no longer fit: the generic channel check
    (("tree=tiny.tree", "tree=tiny.tree\nsurgery_tree_groups=2,3,2"), ["tree=tiny.tree has 7 nodes but classes=9"]),
    (("map=tiny.map", "map=tiny.map\nsurgery_map=1,9"), ["maps a class to 9, outside the 9 classes"]),
    (("map=tiny.map", "map=missing.map"), ["map=missing.map: no such map file", "class map file"]),
])
def test_region_tree_and_map_refusals(tmp_path, edit, words):
    cfg = _region_dir(tmp_path)
    cfg.write_text(cfg.read_text().replace(*edit))
    with pytest.raises(SurgeryError) as e:
        load_darknet(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "layer 2 [region]" in msg
    for w in words or ["channels"]:
        assert w in msg, (w, msg)


# ------------------------------------------------------------------------------------ cost


def _layers_json(cfg: str, *extra: str) -> dict:
    r = run_cli("layers", str(DATA / cfg), "--json", *extra)
    assert r.code == 0, r.err
    return r.json()


def test_deconv_net_macs_equal_the_closed_form():
    d = _layers_json("deconv-iseg.cfg", "--input", "3x64x64")
    s = 64  # conv k x k: out_h * out_w * n * c * k^2; deconv: in_h * in_w * c * n * k^2 (gemm m*n*k)
    want = {0: s * s * 16 * 3 * 9, 2: (s // 2) ** 2 * 32 * 16 * 9, 4: (s // 4) ** 2 * 32 * 16 * 16,
            6: (s // 2) ** 2 * 32 * 8 * 4, 7: s * s * 7 * 8}
    assert {l["index"]: l["macs"] for l in d["layers"] if l["macs"]} == want
    assert d["layers"][4]["output_shape"] == [16, s // 2, s // 2] and d["layers"][6]["output_shape"] == [8, s, s]
    assert d["layers"][8]["type"] == "iseg" and d["totals"]["macs"] == sum(want.values())
    r = run_cli("flops", str(DATA / "deconv-iseg.cfg"), "--strict", "--convention", "darknet", "--json")
    assert r.code == 0, r.err
    assert r.json()["totals"]["darknet_flops"] == 2 * (442_368 + 1_179_648 + 524_288 + 262_144 + 57_344)


def test_lrn_net_macs_equal_the_closed_form():
    d = _layers_json("lrn.cfg")
    conv = 12 * 12 * 16 * 3 * 25 + 6 * 6 * 24 * 16 * 9 + 3 * 3 * 32 * 24 * 9
    assert d["totals"]["macs"] == conv + 32 * 10  # + the connected layer
    types = [l["type"] for l in d["layers"]]
    assert types[1] == types[4] == "normalization" and types[5] == "batchnorm" and types[8] == "l2norm"
    assert [d["layers"][i]["macs"] for i in (1, 4, 5, 8, 11)] == [0] * 5  # no conv/matmul in them
    r = run_cli("flops", str(DATA / "lrn.cfg"), "--strict", "--convention", "darknet", "--json")
    assert r.code == 0, r.err
    assert r.json()["totals"]["darknet_flops"] == 2 * conv  # Darknet's BFLOPs: convolutions only
    r = run_cli("flops", str(DATA / "lrn.cfg"), "--strict", "--convention", "all", "--json")
    assert r.code == 0 and not r.json()["uncounted"], r.err


@pytest.mark.parametrize("cfg", ["xnor.cfg", "region-tree.cfg"])
def test_strict_flops_count_every_op(cfg):
    r = run_cli("flops", str(DATA / cfg), "--strict", "--json")
    assert r.code == 0, r.err
    assert not r.json()["uncounted"]


# ------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("cfg", ["deconv-iseg.cfg", "lrn.cfg", "xnor.cfg"])
def test_export_darknet_round_trip(cfg, tmp_path):
    r = run_cli("export", str(DATA / cfg), "--darknet", str(tmp_path / "out.cfg"), cwd=tmp_path)
    assert r.code == 0, r.err
    src, back = sio.load(str(DATA / cfg)).module.eval(), load_darknet(tmp_path / "out.cfg", tmp_path / "out.weights").eval()
    assert [l.section for l in back.layers] == [l.section for l in src.layers]
    for k, v in src.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = torch.randn(2, *src.input_shape)
    with torch.no_grad():
        assert torch.equal(src(x)[0], back(x)[0])


def test_every_section_the_parser_accepts_has_a_builder():
    """cfg.SECTIONS (what parse_cfg accepts) and net._BUILDERS (what builds) list the same sections."""
    from zoo.darknet.cfg import SECTIONS, _UNSUPPORTED
    from zoo.darknet.net import _BUILDERS

    assert set(SECTIONS) - {"net"} == set(_BUILDERS)
    assert not set(_UNSUPPORTED) & set(SECTIONS)


@pytest.mark.parametrize("after", ["[rnn]\noutput=4\n", "[softmax]\n", "[lstm]\noutput=4\n"])
@pytest.mark.parametrize("section", ["[l2norm]\n", "[batchnorm]\n", "[normalization]\n",
                                     "[iseg]\nclasses=1\nids=1\n", "[deconvolutional]\nfilters=2\nsize=2\nstride=2\n",
                                     "[convolutional]\nfilters=2\nsize=1\n", "[crnn]\noutput_filters=2\n"])
def test_image_layers_refused_where_darknet_has_no_image(after, section):
    """parse_network_cfg passes the previous layer's out_c/out_h/out_w on; [rnn]/[gru]/[lstm]/[softmax]
    /[cost]/[detection] never set them, so an image layer after one is empty in Darknet (l2norm a
    no-op, batchnorm 0 channels, deconv an exit): one line naming both layers, not a made-up image."""
    text = "[net]\ninputs=4\n\n[connected]\noutput=4\n\n" + after + "\n[dropout]\n\n" + section
    with pytest.raises(SurgeryError) as e:
        build_darknet(text, "t.cfg")
    msg = str(e.value)
    assert "\n" not in msg and "layer 3" in msg and "layer 1" in msg and "needs an image input" in msg, msg


def test_net_inputs_only_is_no_image_but_connected_makes_one():
    """[net] inputs=N gives no C x H x W (a conv there would be empty); a [connected] gives 1 x 1 x outputs."""
    with pytest.raises(SurgeryError, match="the \\[net\\] input is a vector of inputs=4"):
        build_darknet("[net]\ninputs=4\n\n[l2norm]\n", "t.cfg")
    net = build_darknet("[net]\ninputs=4\n\n[connected]\noutput=4\n\n[l2norm]\n", "t.cfg")
    assert net.layers[1].out_shape == (4, 1, 1)
