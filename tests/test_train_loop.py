"""The one training loop: zero loss stays put, a perturbed student moves toward the teacher,
freeze is exact, resume equals an uninterrupted run, and bad options are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.datasets import write_digits
from surgery.train import data as tdata
from surgery.train.loop import TrainConfig, TrainData, evaluate, train
from surgery.train.losses import LossSpec, distillation
from surgery.train.matching import stage_ends

MODEL = "zoo:digits_cnn:width=2"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits", per_class=4).output


def _data(root, *, crop_scale=0.25, flip=True):
    train_f, val_f = tdata.folders(root, None, labels=True)
    return TrainData(train_f, val_f, (1, 32, 32), tdata.Normalization.default(1), crop_scale, flip)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kinds, atol", [("at,feat", 0.0), ("kd", 1e-8)])
def test_identical_student_has_zero_loss_and_stays_put(digits, kinds, atol):
    teacher = sio.load(MODEL).module
    taps = tuple(t.node for t in stage_ends(teacher, (1, 32, 32)))
    # BatchNorm statistics frozen: in train mode a BN normalises with batch statistics, so even
    # an identical student would differ from the (eval-mode) teacher.
    cfg = TrainConfig(batch=8, steps=3, lr=0.1, optimizer="sgd", bn="freeze")
    res = train(copy.deepcopy(teacher), distillation(LossSpec.parse(kinds)), _data(digits), cfg,
                teacher=teacher, taps=(taps, taps))
    assert res.steps == 3
    assert res.history[-1]["loss"] == {k: 0.0 for k in kinds.split(",")}
    # kd's gradient is softmax(s) - softmax(t) computed as -q + q * sum(q): sum(q) is 1 only up
    # to float rounding, so kd moves the weights by ~1e-10; at and feat are exactly zero
    before = teacher.state_dict()
    for k, v in res.module.state_dict().items():
        assert torch.allclose(v.double(), before[k].double(), rtol=0, atol=atol), k
    assert res.history[-1]["eval"]["top1_agreement"] == 1.0


def test_perturbed_student_moves_toward_teacher_on_a_fixed_batch(digits):
    teacher = sio.load(MODEL).module
    with torch.no_grad():
        teacher.fc.weight.mul_(30)  # a confident teacher (a freshly initialised one is near uniform)
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g) * p.abs().mean())
    # crop scale 1 and no flip: every step sees the same 40 whole images, one batch
    data = _data(digits, crop_scale=1.0, flip=False)
    fixed = data.train
    kl_before = evaluate(student, teacher, data, fixed)["kl_to_teacher"]
    cfg = TrainConfig(batch=len(fixed), steps=5, lr=3e-3, optimizer="adamw", bn="freeze", schedule="constant")
    res = train(student, distillation(LossSpec.parse("kd")), data, cfg, teacher=teacher)
    kl_after = evaluate(res.module, teacher, data, fixed)["kl_to_teacher"]
    assert kl_before > 0.01
    assert kl_after < 0.7 * kl_before
    kd = [r["loss"]["kd"] for r in res.history]  # one epoch = one step
    assert kd[-1] < 0.7 * kd[0]


def test_freeze_keeps_layers_exact(digits):
    teacher = sio.load(MODEL).module
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.fc.weight.mul_(-1)
    cfg = TrainConfig(batch=8, steps=4, lr=0.05, optimizer="sgd", weight_decay=0.1)
    frozen = ("features.conv0", "features.bn0", "features.conv1")
    res = train(student, distillation(LossSpec.parse("kd")), _data(digits), cfg, teacher=teacher, frozen=frozen)
    before, after = student.state_dict(), res.module.state_dict()
    for k in before:
        if k.startswith(frozen):
            assert torch.equal(before[k], after[k]), k  # weights and running statistics
    assert not torch.equal(before["features.bn1.running_mean"], after["features.bn1.running_mean"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_resume_equals_uninterrupted_run(digits, tmp_path):
    from surgery.train import checkpoint as ckpt

    net = sio.load(MODEL)
    data = _data(digits)
    cfg = TrainConfig(batch=8, epochs=3, lr=1e-2, optimizer="adamw")
    loss = distillation(LossSpec.parse("ce"))
    whole = train(net.module, loss, data, cfg, run_dir=ckpt.create(tmp_path / "a", {}, force=False))
    run = ckpt.create(tmp_path / "b", {}, force=False)
    part = train(net.module, loss, data, cfg, run_dir=run, interrupt=lambda epoch: epoch == 1)
    assert part.steps == 5 and whole.steps == 15
    state = torch.load(run / "state.pt", weights_only=True)  # pickle-free
    assert state["step"] == 5 and state["steps_per_epoch"] == 5 and state["partial"] is None
    resumed = train(net.module, loss, data, cfg, run_dir=run, resume=True)
    assert resumed.resumed_at == 5 and resumed.steps == 15
    a, b = whole.module.state_dict(), resumed.module.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert len((run / "log.jsonl").read_text().splitlines()) == 3


def test_mid_epoch_save_resumes_exactly(digits, tmp_path):
    """--save-every: a run killed inside an epoch (here: a KeyboardInterrupt from the step hook at
    step 7 of 5-step epochs) resumes from the last mid-epoch save (step 6) to the same weights and
    the same per-epoch losses as an uninterrupted run."""
    from surgery.train import checkpoint as ckpt
    from surgery.train.loop import Hooks

    net = sio.load(MODEL)
    data = _data(digits)
    cfg = TrainConfig(batch=8, epochs=3, lr=1e-2, optimizer="adamw", save_every=3)
    loss = distillation(LossSpec.parse("ce"))
    whole = train(net.module, loss, data, cfg, run_dir=ckpt.create(tmp_path / "a", {}, force=False))
    run = ckpt.create(tmp_path / "b", {}, force=False)

    def kill(step, terms, ips):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(net.module, loss, data, cfg, run_dir=run, hooks=Hooks(step=kill))
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == 6 and len(state["history"]) == 1  # 1 step into epoch 2
    assert state["partial"]["count"] == 1
    resumed = train(net.module, loss, data, cfg, run_dir=run, resume=True)
    assert resumed.resumed_at == 6 and resumed.steps == 15
    a, b = whole.module.state_dict(), resumed.module.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]


def test_resume_on_other_data_refused(digits, tmp_path):
    """The position in an epoch follows from the step and the steps per epoch: a resumed run
    whose data make another number of steps per epoch cannot continue exactly and is refused."""
    from surgery.train import checkpoint as ckpt

    net = sio.load(MODEL)
    data = _data(digits)
    loss = distillation(LossSpec.parse("ce"))
    run = ckpt.create(tmp_path / "r", {}, force=False)
    train(net.module, loss, data, TrainConfig(batch=8, epochs=1, lr=1e-2), run_dir=run)
    fewer = TrainData(data.train.subset(range(32)), data.val, data.shape, data.norm)  # 4 steps per epoch, not 5
    with pytest.raises(SurgeryError, match="took 5 steps per epoch"):
        train(net.module, loss, fewer, TrainConfig(batch=8, epochs=2, lr=1e-2), run_dir=run, resume=True)


def test_resume_extends_a_finished_run(digits, tmp_path):
    """--epochs on resume extends: the cosine schedule is re-planned over the new total from the
    step reached (its closed form), a shorter total than what is done is refused."""
    import math

    from surgery.train import checkpoint as ckpt

    net = sio.load(MODEL)
    data = _data(digits)
    loss = distillation(LossSpec.parse("ce"))
    run = ckpt.create(tmp_path / "r", {}, force=False)
    first = train(net.module, loss, data, TrainConfig(batch=8, epochs=1, lr=1e-2), run_dir=run)
    assert first.steps == 5
    longer = train(net.module, loss, data, TrainConfig(batch=8, epochs=3, lr=1e-2), run_dir=run, resume=True)
    assert longer.resumed_at == 5 and longer.steps == 15 and len(longer.history) == 3
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["total_steps"] == 15 and state["scheduler"]["T_max"] == 15
    lr_end = state["optimizer"]["param_groups"][0]["lr"]
    assert lr_end == pytest.approx(1e-2 * (1 + math.cos(math.pi * 15 / 15)) / 2, abs=1e-12)
    with pytest.raises(SurgeryError, match="has done 15 steps already"):
        train(net.module, loss, data, TrainConfig(batch=8, epochs=2, lr=1e-2), run_dir=run, resume=True)


def test_keep_best_returns_the_best_epoch(digits):
    """--keep best: the output holds the epoch with the best held-out score (here accuracy, a
    labelled folder and no teacher); the result names it."""
    from surgery.train.loop import score

    net = sio.load(MODEL)
    data = _data(digits)
    loss = distillation(LossSpec.parse("ce"))
    # a learning rate high enough that the held-out accuracy does not rise every epoch
    cfg = dict(batch=8, epochs=4, lr=0.5, optimizer="sgd", schedule="constant")
    last = train(net.module, loss, data, TrainConfig(**cfg))
    best = train(net.module, loss, data, TrainConfig(**cfg, keep="best"))
    scores = [score(r["eval"])[1] for r in best.history]
    i = max(range(len(scores)), key=lambda j: (scores[j], -j))
    assert best.best["epoch"] == i + 1 and best.best["score"] == scores[i] and best.kept == "best"
    assert best.best["metric"] == "accuracy"
    got = evaluate(best.module, None, data)["accuracy"]
    assert got == pytest.approx(scores[i])
    assert last.kept == "last" and evaluate(last.module, None, data)["accuracy"] == pytest.approx(scores[-1])


def test_input_model_is_not_mutated(digits):
    net = sio.load(MODEL)
    before = _state(net.module)
    train(net.module, distillation(LossSpec.parse("ce")), _data(digits), TrainConfig(batch=8, steps=2, lr=0.1))
    for k, v in net.module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kw, msg", [
    ({"epochs": 0}, "at least 1 epoch"),
    ({"steps": 0, "epochs": None}, "at least 1 step"),
    ({"batch": 1000}, "fewer than one batch"),
    ({"optimizer": "lion"}, "unknown optimizer"),
    ({"lr": -1.0}, "--lr"),
    ({"save_every": 0}, "--save-every"),
    ({"keep": "first"}, "--keep"),
])
def test_bad_options_refused(digits, kw, msg):
    net = sio.load(MODEL)
    with pytest.raises(SurgeryError, match=msg):
        train(net.module, distillation(LossSpec.parse("ce")), _data(digits), TrainConfig(**{"batch": 8, **kw}))
