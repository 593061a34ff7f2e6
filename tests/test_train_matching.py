"""Automatic teacher-student layer matching by output spatial size at stage ends, --match, and
the fx feature taps."""

from __future__ import annotations

import pytest
import torch

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.train.matching import Tapped, auto_pairs, parse_pairs, stage_ends


def test_stage_ends_of_digits_cnn():
    net = sio.load("zoo:digits_cnn")
    ends = stage_ends(net.module, net.input_shape)
    # conv strides 1, 2, 1, 2, 1 at widths 16, 32, 32, 64, 64 (zoo/digits.py): the ReLUs ending
    # each resolution; the pooled 64x1x1 output carries no spatial attention
    assert [(t.index, t.name, t.shape) for t in ends] == [
        (2, "features.relu0", (16, 32, 32)), (8, "features.relu2", (32, 16, 16)), (14, "features.relu4", (64, 8, 8))]


def test_stage_ends_of_resnet18_are_the_group_outputs():
    net = sio.load("zoo:resnet18")
    ends = stage_ends(net.module, net.input_shape)
    # the thesis' "different depth" case: one pair per group of residual blocks (+ the stem)
    assert [(t.node, t.shape) for t in ends] == [
        ("relu", (64, 112, 112)), ("layer1_1_relu_1", (64, 56, 56)), ("layer2_1_relu_1", (128, 28, 28)),
        ("layer3_1_relu_1", (256, 14, 14)), ("layer4_1_relu_1", (512, 7, 7))]


def test_auto_pairs_match_equal_spatial_sizes_across_widths():
    s, t = sio.load("zoo:digits_cnn:width=4"), sio.load("zoo:digits_cnn:width=8")
    pairs = auto_pairs(s.module, s.input_shape, t.module, t.input_shape)
    assert [(p.student.shape, p.teacher.shape) for p in pairs] == [
        ((4, 32, 32), (8, 32, 32)), ((8, 16, 16), (16, 16, 16)), ((16, 8, 8), (32, 8, 8))]


def test_no_common_spatial_size_asks_for_match():
    s = sio.load("zoo:digits_cnn:width=2")
    t = sio.load("zoo:digits_cnn:width=2", input_shape=(1, 24, 24))
    with pytest.raises(SurgeryError, match="--match"):
        auto_pairs(s.module, s.input_shape, t.module, t.input_shape)


def test_match_by_index_and_name_and_errors():
    s, t = sio.load("zoo:digits_cnn:width=2"), sio.load("zoo:digits_cnn:width=4")
    pairs = parse_pairs("8:features.relu2,features_relu4:14", s.module, s.input_shape, t.module, t.input_shape)
    assert [(p.student.index, p.teacher.index) for p in pairs] == [(8, 8), (14, 14)]
    with pytest.raises(SurgeryError, match="student no layer named 'features.relu9'"):
        parse_pairs("features.relu9:8", s.module, s.input_shape, t.module, t.input_shape)
    with pytest.raises(SurgeryError, match="teacher layer 99 does not exist"):
        parse_pairs("8:99", s.module, s.input_shape, t.module, t.input_shape)
    with pytest.raises(SurgeryError, match="STUDENT_LAYER:TEACHER_LAYER"):
        parse_pairs("8", s.module, s.input_shape, t.module, t.input_shape)


def test_tapped_returns_output_and_the_named_feature_maps():
    net = sio.load("zoo:digits_cnn:width=2")
    m = net.module
    tapped = Tapped(m, ["features_relu2"])
    x = net.example_input(3)
    out, feats = tapped(x)
    assert torch.equal(out, m(x))
    assert torch.equal(feats[0], m.features[:9](x))  # conv0..relu2
    assert tapped.inner.get_parameter("fc.weight") is m.fc.weight  # shares parameters
