"""Training: param groups, poly schedule, learning on the synthetic set, exact resume,
torch.compile (no graph breaks, same step as eager), 2-process DDP with gloo."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn as nn

from pspnet.build import build_model
from pspnet.checkpoint import load_training_state
from pspnet.config import Config
from pspnet.evaluate import run_eval
from pspnet.model import PSPNet, TinyPSPNet
from pspnet.optim import PolyLR, param_groups, poly_lr
from pspnet.train import train

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


def tiny_cfg(tmp_path, **kw) -> Config:
    """A seconds-long configuration: width-4 TinyPSPNet, 33x33 synthetic images, 3 classes."""
    base = dict(
        preset="synthetic",
        dataset="synthetic",
        dataset_kwargs={"size": 33, "length": 32, "num_classes": 3, "max_shapes": 2},
        arch="tiny",
        tiny_width=4,
        pretrained=False,
        crop_size=(33, 33),
        scale_min=0.9,
        scale_max=1.1,
        rotate_min=-5.0,
        rotate_max=5.0,
        blur=False,
        batch_size=4,
        epochs=1,
        workers=0,
        progress=False,
        plot=False,
        final_eval=False,
        eval_every=0,
        val_batch_size=8,
        output_dir=str(tmp_path / "run"),
    )
    base.update(kw)
    return Config.from_dict(base)


def _quiet(*a, **k):
    pass


# ------------------------------------------------------------------------ optimiser pieces


def test_param_groups_official_split():
    cfg = Config(arch="tiny", tiny_width=4, classes=3)
    model = build_model(cfg)
    groups = param_groups(model, base_lr=0.01, head_lr_mult=10.0)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == pytest.approx(0.01) and groups[1]["lr"] == pytest.approx(0.1)
    ids = {name: id(p) for name, p in model.named_parameters()}
    by_id = {id(p): g["name"] for g in groups for p in g["params"]}
    assert len(by_id) == len(ids) == sum(len(g["params"]) for g in groups)  # each exactly once
    for name, pid in ids.items():
        top = name.split(".")[0]
        assert top in ("layer0", "layer1", "layer2", "layer3", "layer4", "ppm", "cls", "aux")
        expected = "head" if top in ("ppm", "cls", "aux") else "backbone"
        assert by_id[pid] == expected, name


def test_param_groups_on_full_pspnet():
    cfg = Config(arch="pspnet", layers=50, classes=5, pretrained=False)
    model = build_model(cfg)
    groups = {g["name"]: g for g in param_groups(model, 0.02)}
    head = {id(p) for m in (model.ppm, model.cls, model.aux) for p in m.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head
    assert groups["head"]["lr"] == pytest.approx(0.2)
    assert groups["backbone"]["lr"] == pytest.approx(0.02)
    n_backbone = sum(1 for n, _ in model.named_parameters() if n.startswith("layer"))
    assert len(groups["backbone"]["params"]) == n_backbone


def test_poly_schedule_values():
    p = nn.Parameter(torch.zeros(1))
    q = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(
        [dict(params=[p], lr=0.01), dict(params=[q], lr=0.1)], lr=0.01, momentum=0.9
    )
    sched = PolyLR(opt, max_iter=10, power=0.9)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for i, (a, b) in enumerate(seen):
        assert a == pytest.approx(0.01 * (1 - i / 10) ** 0.9, rel=1e-12)
        assert b == pytest.approx(0.1 * (1 - i / 10) ** 0.9, rel=1e-12)
    assert seen[0] == pytest.approx([0.01, 0.1])  # the first step uses base_lr
    assert opt.param_groups[0]["lr"] == 0.0  # after max_iter
    assert poly_lr(0.01, 5, 10, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 20, 10) == 0.0
    with pytest.raises(ValueError):
        poly_lr(0.01, 0, 0)
    # state round trip keeps the position
    sched2 = PolyLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01), max_iter=10)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 10


@pytest.mark.parametrize("head", [None, "concat"])
def test_tiny_model_is_a_pspnet(head):
    model = TinyPSPNet(classes=3, width=4, head=head)
    assert model.head == (head or PSPNet.__init__.__kwdefaults__.get("head", "concat"))
    names = {n for n, _ in model.named_children()}
    assert names >= {"layer0", "layer1", "layer2", "layer3", "layer4", "ppm", "cls", "aux"}
    x = torch.randn(2, 3, 30, 37)
    model.eval()
    assert model(x).shape == (2, 3, 30, 37)
    model.train()
    pred, main, aux = model(x, torch.randint(0, 3, (2, 30, 37)))
    assert pred.shape == (2, 30, 37) and main.ndim == 0 and aux.ndim == 0


# ------------------------------------------------------------------------------- training


def test_training_lowers_loss_and_beats_chance(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        tiny_width=8,
        dataset_kwargs={"size": 33, "length": 64, "num_classes": 3, "max_shapes": 2},
        batch_size=8,
        epochs=5,
        base_lr=0.02,
        final_eval=True,
    )
    out = train(cfg, log=_quiet)  # 5 epochs x 8 steps = 40 steps
    losses = [r["loss"] for r in out["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    m = out["metrics"]
    assert m["mIoU"] > 1 / 3 + 0.05, m
    assert (tmp_path / "run" / "last.pth").is_file()
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 5


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_is_bit_identical(tmp_path):
    common = dict(epochs=2, max_iters_per_epoch=3, dropout=0.3)
    straight = train(tiny_cfg(tmp_path / "a", **common), log=_quiet)["model"].state_dict()
    # a 2-epoch run killed after epoch 1, then resumed from last.pth in the same process
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    ckpt_dir = tmp_path / "c" / "run"
    cfg_c = tiny_cfg(tmp_path / "c", **common)
    _train_one_epoch_of_two(cfg_c)
    resumed = train(cfg_c.replace(resume="auto"), log=_quiet)["model"].state_dict()
    assert set(straight) == set(resumed)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    final = _state(ckpt_dir / "last.pth")
    assert final["epoch"] == 2 and final["iteration"] == 6
    assert set(final) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config", "epoch"}
    assert set(final["rng"]) == {"torch", "cuda", "numpy", "python"}


def _train_one_epoch_of_two(cfg):
    """Run epoch 1 of a 2-epoch schedule and stop (as if the job had been killed)."""
    import pspnet.train as T

    calls = {"n": 0}
    real = T.build_train_loader

    class _Stop(Exception):
        pass

    def loader(cfg_, ds, rank=0, world=1, epoch=0):
        if epoch >= 1:
            raise _Stop
        calls["n"] += 1
        return real(cfg_, ds, rank, world, epoch)

    T.build_train_loader = loader
    try:
        with pytest.raises(_Stop):
            train(cfg, log=_quiet)
    finally:
        T.build_train_loader = real
    state = _state(cfg.out_dir / "last.pth")
    assert state["epoch"] == 1 and calls["n"] == 1


def test_resume_restores_optimizer_and_rng(tmp_path):
    cfg = tiny_cfg(tmp_path, max_iters_per_epoch=2)
    out = train(cfg, log=_quiet)
    model = build_model(out["config"])
    opt = torch.optim.SGD(param_groups(model, cfg.base_lr), lr=cfg.base_lr, momentum=0.9)
    sched = PolyLR(opt, max_iter=2)
    torch.manual_seed(99)
    state = load_training_state(cfg.out_dir / "last.pth", model, opt, sched)
    assert sched.last_epoch == 2 and state["epoch"] == 1
    assert all("momentum_buffer" in s for s in opt.state.values()) and opt.state
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    with pytest.raises(FileNotFoundError):
        train(cfg.replace(resume=str(tmp_path / "missing.pth")), log=_quiet)


# ------------------------------------------------------------------------------ compile


def test_compiled_training_step_has_no_graph_breaks():
    torch._dynamo.reset()
    model = TinyPSPNet(classes=3, width=4).train()
    x = torch.randn(2, 3, 33, 33)
    y = torch.randint(0, 3, (2, 33, 33))
    y[0, :4] = 255
    explanation = torch._dynamo.explain(model)(x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_training_equals_eager(tmp_path):
    torch._dynamo.reset()
    common = dict(epochs=1, max_iters_per_epoch=3, dropout=0.0)
    eager = train(tiny_cfg(tmp_path / "e", **common), log=_quiet)["model"].state_dict()
    compiled = train(
        tiny_cfg(tmp_path / "c", compile=True, compile_backend="aot_eager", **common), log=_quiet
    )["model"].state_dict()
    for k, v in eager.items():
        if v.is_floating_point():
            torch.testing.assert_close(compiled[k], v, rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(compiled[k], v), k
    torch._dynamo.reset()


# --------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from psp_kernels.ops import utils

    utils.INTERPRETER = False  # the plain-torch paths, as in the plain_torch_cpu fixture
    torch.set_num_threads(1)
    import torch.distributed as dist

    cfg = Config.from_dict(cfg_dict)
    try:
        out = train(cfg, log=_quiet)
        params = {k: v.detach().clone() for k, v in out["model"].named_parameters()}
        torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ddp_two_processes_gloo_train_in_step(tmp_path):
    import torch.multiprocessing as mp

    cfg = tiny_cfg(tmp_path, epochs=1, max_iters_per_epoch=3, batch_size=4, final_eval=True)
    mp.spawn(
        _ddp_worker,
        args=(2, _free_port(), cfg.to_dict(), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    p0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(cfg.seed)  # train() builds the model right after seeding
    init = build_model(cfg.replace(classes=3)).state_dict()
    moved = False
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
        moved |= not torch.equal(p0[k], init[k])
    assert moved
    # only rank 0 wrote files
    assert (tmp_path / "run" / "last.pth").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_compile_channels_last(tmp_path, amp):
    torch._dynamo.reset()
    cfg = tiny_cfg(
        tmp_path, device="cuda", amp=amp, compile=True, channels_last=True, epochs=2,
        max_iters_per_epoch=3, final_eval=True,
    )  # fmt: skip
    out = train(cfg, log=_quiet)
    assert all(math.isfinite(r["loss"]) for r in out["history"])
    state = _state(tmp_path / "run" / "last.pth")
    assert state["scaler"] is not None
    if amp == "fp16":
        assert state["scaler"].get("scale", 0) > 0
    # the final evaluation is the saved model's: evaluating the checkpoint again (uncompiled)
    # counts every val pixel and finds the same mIoU, up to a few pixels flipped by the
    # low-precision compiled forward
    m = out["metrics"]
    again = run_eval(cfg, str(tmp_path / "run" / "last.pth"), log=_quiet)
    assert m["pixels"] == again["pixels"] == 32 * 33 * 33
    assert m["mIoU"] == pytest.approx(again["mIoU"], abs=0.02)
    torch._dynamo.reset()
