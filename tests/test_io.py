"""Model references, the checkpoint format, the pickle gate and atomic writes."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.net import ArchSpec, Net, Step

SMALL = "zoo:resnet18:num_classes=10"


def test_parse_zoo_ref_keeps_commas_inside_values():
    name, kw = sio.parse_zoo_ref("zoo:yolov3:classes=1,anchors=10,13,16,30,width=320")
    assert name == "yolov3"
    assert kw == {"classes": "1", "anchors": "10,13,16,30", "width": "320"}


@pytest.mark.parametrize("ref", ["zoo:", "zoo:resnet18:bogus"])
def test_bad_zoo_ref(ref):
    with pytest.raises(SurgeryError):
        sio.load(ref)


def test_unknown_zoo_name_suggests_close_matches():
    with pytest.raises(SurgeryError, match=r"resnet50"):
        sio.load("zoo:resnet05")


def test_unknown_zoo_argument_lists_arguments():
    with pytest.raises(SurgeryError, match="num_classes"):
        sio.load("zoo:resnet18:num_clases=3")


def test_zoo_is_deterministic():
    a, b = sio.load(SMALL), sio.load(SMALL)
    for (k, va), vb in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(va, vb), k


def test_checkpoint_round_trip(tmp_path):
    net = sio.load(SMALL)
    p = sio.save(net, tmp_path / "m.pt")
    # the pickle-free contract: a plain weights_only load works
    raw = torch.load(p, weights_only=True)
    assert raw["format"] == sio.CHECKPOINT_FORMAT and raw["format_version"] == sio.CHECKPOINT_VERSION
    assert raw["arch"]["name"] == "resnet18" and raw["input_shape"] == list(net.input_shape)
    assert "tool_version" in raw["metadata"]
    back = sio.load(str(p))
    assert back.format == "checkpoint" and back.arch == net.arch
    x = net.example_input(2)
    with torch.no_grad():
        assert torch.equal(net.module(x), back.module(x))
    assert str(p) in back.metadata["sources"]


def test_save_never_overwrites_without_force(tmp_path):
    net = sio.load(SMALL)
    p = sio.save(net, tmp_path / "m.pt")
    before = p.read_bytes()
    with pytest.raises(SurgeryError, match="--force"):
        sio.save(net, p)
    assert p.read_bytes() == before
    sio.save(net, p, force=True)


def test_save_never_overwrites_an_input(tmp_path):
    net = sio.load(SMALL)
    p = sio.save(net, tmp_path / "m.pt")
    with pytest.raises(SurgeryError, match="input"):
        sio.save(net, p, force=True, inputs=[p])


def test_failed_writer_leaves_nothing(tmp_path):
    def boom(tmps):
        tmps[0].write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        sio.atomic_write([tmp_path / "out.pt"], boom)
    assert list(tmp_path.iterdir()) == []


def test_bare_state_dict_needs_arch(tmp_path):
    net = sio.load(SMALL)
    p = tmp_path / "sd.pt"
    torch.save(net.module.state_dict(), p)
    with pytest.raises(SurgeryError, match="--arch"):
        sio.load(str(p))
    back = sio.load(str(p), arch=SMALL)
    assert back.format == "state_dict"
    for k, v in net.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k])


def test_wrapped_state_dict_is_found(tmp_path):
    net = sio.load(SMALL)
    p = tmp_path / "train.pt"
    torch.save({"epoch": 3, "state_dict": net.module.state_dict()}, p)
    assert sio.load(str(p), arch=SMALL).params == net.params


def test_state_dict_keys_must_fit_arch(tmp_path):
    net = sio.load(SMALL)
    sd = net.module.state_dict()
    sd.pop("fc.weight")
    sd["extra.weight"] = torch.zeros(1)
    p = tmp_path / "sd.pt"
    torch.save(sd, p)
    with pytest.raises(SurgeryError, match=r"missing .*fc.weight.*unexpected .*extra.weight"):
        sio.load(str(p), arch=SMALL)


def test_state_dict_shape_mismatch_names_key(tmp_path):
    sd = sio.load("zoo:resnet18:num_classes=7").module.state_dict()
    p = tmp_path / "sd.pt"
    torch.save(sd, p)
    with pytest.raises(SurgeryError, match="fc.weight"):
        sio.load(str(p), arch=SMALL)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


def test_pickled_module_refused_then_trusted(tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(Tiny(), p)
    with pytest.raises(SurgeryError) as e:
        sio.load(str(p))
    msg = str(e.value)
    assert str(p) in msg and "--trust-code" in msg and "\n" not in msg
    with pytest.raises(SurgeryError, match="--input"):
        sio.load(str(p), trust_pickle=True)
    net = sio.load(str(p), trust_pickle=True, input_shape=(3, 8, 8))
    assert net.format == "pickle" and net.params == 3 * 4 * 9 + 4


def test_trusted_pickle_with_shape(tmp_path):
    m = Tiny()
    m.input_shape = (3, 8, 8)
    p = tmp_path / "whole.pt"
    torch.save(m, p)
    net = sio.load(str(p), trust_pickle=True)
    assert net.format == "pickle" and net.input_shape == (3, 8, 8)
    # its class imports again and rebuilds it: editable, saved pickle-free as a py: arch (issue 16)
    assert net.editable and net.arch.kind == "py" and net.arch.name.endswith(":Tiny")
    sio.save(net, tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt", weights_only=True)["arch"]["kind"] == "py"


def test_torchscript_is_analysis_only(tmp_path):
    p = tmp_path / "ts.pt"
    torch.jit.script(Tiny()).save(str(p))
    with pytest.raises(SurgeryError, match="--trust-code"):  # TorchScript is code: refused untrusted
        sio.load(str(p), input_shape=(3, 8, 8))
    with pytest.raises(SurgeryError, match="--input"):
        sio.load(str(p), trust_code=True)
    net = sio.load(str(p), trust_code=True, input_shape=(3, 8, 8))
    assert net.format == "torchscript" and not net.editable
    assert net.params == 3 * 4 * 9 + 4


def test_exported_program(tmp_path):
    p = tmp_path / "m.pt2"
    ep = torch.export.export(Tiny(), (torch.randn(1, 3, 8, 8),))
    torch.export.save(ep, str(p))
    net = sio.load(str(p))
    assert net.format == "exported" and net.input_shape == (3, 8, 8) and net.params == 3 * 4 * 9 + 4


def test_missing_file():
    with pytest.raises(SurgeryError, match="does not exist"):
        sio.load("/nonexistent/model.pt")


def test_garbage_file(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SurgeryError, match="junk.pt"):
        sio.load(str(p))


def test_checkpoint_from_future_version(tmp_path):
    net = sio.load(SMALL)
    ck = sio.checkpoint_dict(net)
    ck["format_version"] = 99
    p = tmp_path / "f.pt"
    torch.save(ck, p)
    with pytest.raises(SurgeryError, match="version 99"):
        sio.load(str(p))


def test_unknown_recipe_step(tmp_path):
    net = sio.load(SMALL)
    net2 = net.evolve(net.module, Step("teleport", {}))
    p = tmp_path / "r.pt"
    sio.save(net2, p)
    with pytest.raises(SurgeryError, match="teleport"):
        sio.load(str(p))


def test_net_is_frozen():
    net = sio.load(SMALL)
    with pytest.raises(Exception):
        net.input_shape = (1,)
    assert isinstance(net.arch, ArchSpec) and isinstance(net, Net)


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    p = sio.save(sio.load(SMALL), tmp_path / "m.pt")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_output_cannot_be_a_zoo_reference():
    with pytest.raises(SurgeryError, match="zoo reference"):
        sio.check_outputs(["zoo:resnet18"], force=True)


def test_checkpoint_records_and_checks_a_content_hash(tmp_path):
    net = sio.load(SMALL)
    p = sio.save(net, tmp_path / "m.pt")
    raw = torch.load(p, weights_only=True)
    state = net.module.state_dict()
    # independent of state_hash: a second, differently ordered dict of the same tensors hashes equal,
    # and one changed value changes it
    assert raw["state_dict_sha256"] == sio.state_hash(dict(reversed(list(state.items()))))
    changed = dict(state)
    changed["fc.bias"] = changed["fc.bias"].clone()
    changed["fc.bias"][0] += 1
    assert sio.state_hash(changed) != raw["state_dict_sha256"]
    raw["state_dict"] = changed
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(SurgeryError, match="edited.pt: its weights do not match the content hash"):
        sio.load(str(tmp_path / "edited.pt"))


def test_check_outputs_counts_a_cfgs_weights_as_input(tmp_path):
    (tmp_path / "a.cfg").write_text("[net]\n")
    for force in (False, True):
        with pytest.raises(SurgeryError, match="is also an input"):
            sio.check_outputs([tmp_path / "a.weights"], force=force, inputs=[tmp_path / "a.cfg"])
