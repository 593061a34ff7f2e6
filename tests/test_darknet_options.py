"""Darknet parser options beyond the common ones: ``[reorg] extra=`` and ``flatten=`` against
straight ports of pjreddie's C (reorg_layer.c ``forward_reorg_layer``, blas.c ``flatten``), and
a hierarchical softmax ``tree=`` whose file is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery.core.errors import SurgeryError
from zoo.darknet import build_darknet, parse_cfg, write_cfg

NET = "[net]\nchannels=4\nheight=2\nwidth=4\n"


def _darknet_flatten(x: np.ndarray, size: int, layers: int, batch: int, forward: bool) -> np.ndarray:
    """blas.c flatten(), loop for loop."""
    x = x.reshape(-1)
    swap = np.zeros_like(x)
    for b in range(batch):
        for c in range(layers):
            for i in range(size):
                i1 = b * layers * size + c * size + i
                i2 = b * layers * size + i * layers + c
                if forward:
                    swap[i2] = x[i1]
                else:
                    swap[i1] = x[i2]
    return swap


@pytest.mark.parametrize("reverse", [0, 1])
def test_reorg_flatten_is_darknets_transpose(reverse):
    net = build_darknet(NET + f"[reorg]\nstride=2\nflatten=1\nreverse={reverse}\n")
    lay = net.layers[0]
    # make_reorg_layer: out = (c*s^2, h/s, w/s), reverse: (c/s^2, h*s, w*s)
    assert lay.out_shape == ((1, 4, 8) if reverse else (16, 1, 2))
    x = torch.arange(2 * 4 * 2 * 4, dtype=torch.float32).reshape(2, 4, 2, 4)
    want = _darknet_flatten(x.numpy(), 2 * 4, 4, 2, forward=not reverse)
    got = net(x)[0]
    assert tuple(got.shape[1:]) == lay.out_shape
    assert np.array_equal(got.reshape(-1).numpy(), want)


def test_reorg_extra_appends_zeros_for_a_connected_layer():
    text = NET + "[reorg]\nextra=5\n[connected]\noutput=3\nactivation=linear\n"
    net = build_darknet(text)
    reorg, fc = net.layers
    inputs = 4 * 2 * 4
    assert reorg.out_shape == (inputs + 5, 1, 1)  # Darknet: outputs = inputs + extra
    assert fc.fc.weight.shape == (3, inputs + 5)
    x = torch.randn(2, 4, 2, 4)
    with torch.no_grad():
        y = reorg(x)
    want = np.zeros((2, inputs + 5), np.float32)  # calloc'd output, copy_cpu of l.inputs values per image
    for b in range(2):
        want[b, :inputs] = x[b].reshape(-1).numpy()
    assert np.array_equal(y.reshape(2, -1).numpy(), want)
    assert write_cfg(parse_cfg(text)) == write_cfg(net.blocks)  # the options survive the cfg writer


def test_reorg_options_refused_clearly():
    with pytest.raises(SurgeryError, match="flatten=1 with extra="):
        build_darknet(NET + "[reorg]\nflatten=1\nextra=2\n")
    with pytest.raises(SurgeryError, match="extra=-1 must be at least 0"):
        build_darknet(NET + "[reorg]\nextra=-1\n")


def test_softmax_tree_without_its_file_refused_with_the_reason():
    with pytest.raises(SurgeryError) as e:
        build_darknet(NET + "[softmax]\ntree=data/9k.tree\n")
    msg = str(e.value)
    assert "tree=data/9k.tree" in msg and "no such tree file" in msg and "[softmax]" in msg, msg


def test_pjreddie_sections_and_aliases_build_and_write_back():
    text = NET + ("[deconv]\nfilters=4\nsize=2\nstride=2\n[lrn]\n[l2norm]\n[batchnorm]\n[logistic]\n"
                  "[convolutional]\nfilters=4\nsize=1\nbinary=1\n[convolutional]\nfilters=4\nsize=1\nxnor=1\n"
                  "[iseg]\nclasses=1\nids=3\n")
    net = build_darknet(text)
    assert [l.section for l in net.layers] == ["deconvolutional", "normalization", "l2norm", "batchnorm", "logistic",
                                               "convolutional", "convolutional", "iseg"]
    assert net.layers[-1].out_shape == (4, 4, 8)  # deconv: (2 - 1) * 2 + 2 by (4 - 1) * 2 + 2
    back = build_darknet(net.cfg_text(darknet=True))  # written as [deconvolutional], [normalization]
    assert "[deconvolutional]" in net.cfg_text() and "[normalization]" in net.cfg_text()
    assert [l.section for l in back.layers] == [l.section for l in net.layers]


@pytest.mark.parametrize("text, words", [
    ("[convolutional]\nfilters=4\nantialiasing=1\n", ["antialiasing=1 is not supported"]),
    ("[convolutional]\nfilters=4\ndilation=2\n", ["dilation=2 is not supported"]),
    ("[convolutional]\nfilters=4\ncoordconv=1\n", ["coordconv=1 is not supported"]),
    ("[maxpool]\nmaxpool_depth=1\n", ["maxpool_depth=1 is not supported"]),
    ("[scale_channels]\nfrom=-1\n", ["[scale_channels] is not supported by surgery"]),
    ("[conv_lstm]\noutput=4\n", ["[conv_lstm] is not supported by surgery"]),
])
def test_alexeyab_only_options_and_sections_stay_refused(text, words):
    with pytest.raises(SurgeryError) as e:
        build_darknet(NET + text, source="ab.cfg")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ab.cfg")
    for w in words:
        assert w in msg, (w, msg)
