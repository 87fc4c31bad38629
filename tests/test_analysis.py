"""The workload report's instruments: launch recording, JIT specialization, machine-code reading,
the cost model, and ``python -m psp_kernels.compile_check --workload``.

The tests run with Triton's interpreter on, which replaces the kernels, so everything that
compiles runs in a subprocess without it (as the report itself does).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import psp_kernels
from psp_kernels._aot import Traffic
from psp_kernels.analysis import cost, machine
from psp_kernels.analysis.record import TensorArg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(psp_kernels.__file__)))

PTX = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1,
	.param .u32 k_param_2,
	.param .u64 .ptr .global .align 1 k_param_3
)
{
	ld.param.b64 	%rd1, [k_param_0];
	ld.param.b64 	%rd2, [k_param_1];
	ld.param.b32 	%r1, [k_param_2];
	ld.param.b64 	%rd3, [k_param_3];
	mul.wide.s32 	%rd4, %r1, 4;
	add.s64 	%rd5, %rd2, %rd4;
	@%p1 ld.global.b32 { %r2 }, [ %rd5 + 0 ];
	mul.wide.s32 	%rd6, %r2, 2;
	add.s64 	%rd7, %rd1, %rd6;
$L__loop:
	@%p2 ld.global.v4.b32 { %r3, %r4, %r5, %r6 }, [ %rd7 + 0 ];
	cp.async.cg.shared.global [ %r9 + 0 ], [ %rd7 + 0 ], 0x10, %r10;
	add.s64 	%rd7, %rd7, %rd4;
	st.global.b16 [ %rd3 + 0 ], { %rs1 };
	selp.b64 	%rd8, %rd1, %rd3, %p3;
	st.global.v2.b32 [ %rd8 + 0 ], { %r3, %r4 };
}
"""


def test_ptx_accesses_are_traced_to_their_pointer():
    got = [(a["kind"], a["width"], a["params"]) for a in machine.ptx_accesses(PTX)]
    assert got == [
        ("ld", 4, [1]),  # the table: an index, whose value carries no provenance
        ("ld", 16, [0]),  # x through a loop-carried pointer, offset by the loaded index
        ("cp.async", 16, [0]),
        ("st", 2, [3]),
        ("st", 8, [0, 3]),  # a select between two pointers blames both
    ]


def test_occupancy_limits():
    assert machine.occupancy(255, 0, 8, 90) == 1  # registers: 64 K / (256 x 32 x 8)
    assert machine.occupancy(32, 0, 4, 90) == 16  # threads: 2048 / 128
    assert machine.occupancy(32, 100 * 1024, 4, 90) == 2  # shared memory: 228 K / 101 K
    assert machine.occupancy(32, 100 * 1024, 4, 80) == 1


def _machine(**kw):
    base = {"sass": {"HGMMA": 1}, "occupancy": 2, "num_stages": 3, "accesses": [],
            "param_names": ["x_ptr"]}  # fmt: skip
    return dict(base, **kw)


def test_cost_model_terms():
    h100 = cost.GPUS["H100"]
    bw = Traffic(moved=int(0.9 * 3350e3 * 1000), ideal=0, steps=1)  # 1 ms at 90% of 3.35 TB/s
    t = cost.launch_time(bw, _machine(), programs=264, gpu=h100)
    assert t["bound"] == "bandwidth" and t["us"] == pytest.approx(1000.0, rel=1e-3)
    lat = Traffic(moved=0, ideal=0, steps=30, step_tensor="x_ptr")
    t = cost.launch_time(lat, _machine(), programs=600, gpu=h100)  # 3 rounds of 264 slots
    assert t["bound"] == "latency" and t["us"] == pytest.approx(90.0)
    pipelined = _machine(accesses=[{"kind": "cp.async", "width": 16, "params": [0]}])
    t = cost.launch_time(lat, pipelined, programs=600, gpu=h100)  # 2 loads in flight
    assert t["us"] == pytest.approx(45.0) and t["depth"] == 2
    # a pipelined loop of one iteration (here: the inner loop of a nest) has one load in flight
    nested = Traffic(moved=0, ideal=0, steps=30, step_tensor="x_ptr", loop_steps=1)
    assert cost.launch_time(nested, pipelined, programs=600, gpu=h100)["depth"] == 1
    short = Traffic(moved=0, ideal=0, steps=1, step_tensor="x_ptr")
    assert cost.launch_time(short, pipelined, programs=600, gpu=h100)["us"] == pytest.approx(3.0)
    dot = Traffic(moved=0, ideal=0, dot_flops=989e7, dot_kind="16bit")
    t = cost.launch_time(dot, _machine(), 132, h100)
    assert t["bound"] == "tensor cores" and t["us"] == pytest.approx(10.0)
    ffma = cost.launch_time(dot, _machine(sass={"FFMA": 9}), 132, h100)
    assert ffma["us"] == pytest.approx(989e7 / 67e12 * 1e6)  # no tensor cores: the FMA rate
    few = cost.launch_time(dot, _machine(), 1, h100)  # one program: one SM's share of the rate
    assert few["terms"]["tensor cores"] == pytest.approx(1320.0)
    assert cost.launch_time(Traffic(0, 0), _machine(), 1, h100)["bound"] == "launch"
    exps = Traffic(moved=0, ideal=0, sfu_ops=132 * 16 * 1.98e9 * 1e-5)  # 16 per SM per clock
    t = cost.launch_time(exps, _machine(), 132, h100)
    assert t["bound"] == "special functions" and t["us"] == pytest.approx(10.0)
    assert cost.launch_time(exps, _machine(), 133, h100)["us"] == pytest.approx(20.0, rel=0.01)


def test_sass_widths():
    ops = ("LDG.E.128", "LDG.E.U16", "LDG.E", "STG.E.64", "LDGSTS.E.BYPASS.LTC128B.128")
    assert [machine._sass_width(op) for op in ops] == [16, 2, 4, 8, 16]


SCRIPT = textwrap.dedent(
    """
    import json, torch
    from psp_kernels.analysis import machine
    from psp_kernels.analysis.workloads import Shape, record_workload
    launches = record_workload("ppm", Shape(1, 64, 61, 17, torch.float32), num_sms=132)
    pool = launches[0]
    src = machine.jit_source(pool, 90)
    m = machine.analyse(src)
    print(json.dumps({
        "names": [l.name for l in launches], "steps": [l.step for l in launches],
        "grid": pool.grid, "signature": src["signature"],
        "attrs": {str(k[0]): v for k, v in src["attrs"].items()},
        "registers": m["registers"], "sass": m["sass"],
    }))
    """
)


def _env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_recorded_launches_are_specialized_like_the_jit():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the eval PPM: kernel 1's stage 1 (copying x), stage 2 (all bins in one launch), kernel 2
    assert out["names"] == [
        "_pool_cells_kernel",
        "_cells_conv_kernel",
        "_upsample_concat_fwd_kernel",
    ]
    assert set(out["steps"]) == {"PPM eval forward"}
    assert out["grid"][1] > 1  # batch 1: the pixels are split to fill the 132 SMs
    sig = out["signature"]
    assert sig["stride_xp"] == "constexpr"  # a stride of 1 becomes a constant
    assert sig["x_ptr"] == "*fp32" and sig["C"] == "i32"
    names = list(sig)
    assert out["attrs"][str(names.index("x_ptr"))] == [["tt.divisibility", 16]]
    assert out["attrs"][str(names.index("C"))] == [["tt.divisibility", 16]]  # C = 64
    assert out["attrs"][str(names.index("W"))] == []  # W = 17
    assert out["registers"] > 0 and sum(v for k, v in out["sass"].items() if "LDG" in k) > 0


SAME_AS_PSPNET = textwrap.dedent(
    """
    import json, torch
    import pspnet
    from pspnet.convert.units import fused_head
    from pspnet.heads import concat_free_conv, concat_free_conv3x3
    from psp_kernels.analysis.record import recording
    from psp_kernels.analysis.workloads import HEAD_OUT, LOSS_CLASSES, Shape, crop, record_workload
    from pspnet.model import fused_loss_options

    def key(launches):
        return [(l.name, l.grid, sorted((k, repr(v)) for k, v in l.args.items()), l.options)
                for l in launches]

    def converted_head(s):
        # a PSPHead-like module read by pspnet.convert, in eval (what converted heads run)
        nn = torch.nn
        branches = [nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(s.c, s.r, 1, bias=False),
                                  nn.BatchNorm2d(s.r), nn.ReLU()) for b in s.bins]
        post = nn.Sequential(nn.Conv2d(s.c + s.r * len(s.bins), HEAD_OUT, 3, padding=1,
                                       bias=False), nn.BatchNorm2d(HEAD_OUT), nn.ReLU())
        return [b.to("meta", s.dtype).eval() for b in branches], post.to("meta", s.dtype).eval()

    def pspnet_launches(workload, s):
        x = torch.empty(s.n, s.c, s.h, s.w, device="meta", dtype=s.dtype)
        if s.layout == "nhwc":
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_(workload not in ("ppm", "psphead"))
        with recording(132, 90) as rec:
            if workload == "psphead":
                branches, post = converted_head(s)
                # (the recorder sees only Triton launches: post's cuDNN-side ops are not kept)
                with torch.no_grad():
                    out = fused_head(x, branches, post, x_last=False, align_corners=False)
            elif workload.startswith("head"):
                k = 1 if workload == "head-1x1" else 3
                ys = [torch.empty(s.n, s.r, b, b, device="meta", dtype=s.dtype,
                                  requires_grad=True) for b in s.bins]
                w = torch.empty(HEAD_OUT, s.c + s.r * len(s.bins), k, k, device="meta",
                                dtype=s.dtype, requires_grad=True)
                if workload == "head":
                    out = concat_free_conv3x3(x, ys, w)
                else:
                    out = concat_free_conv(x, ys, w, x_last=True)
            else:
                ppm = pspnet.PPM(s.c, s.r, s.bins).to("meta", s.dtype).train(workload != "ppm")
                with torch.set_grad_enabled(workload != "ppm"):
                    out = ppm(x)
            if out.requires_grad:
                out.backward(torch.empty_like(out))
        return rec.launches

    def pspnet_loss_launches(s):
        # PSPNet's fused losses with its default criterion: the main head's forward (with the
        # prediction) and backward, as the workload records them (the auxiliary forward dropped)
        model = pspnet.TinyPSPNet(classes=LOSS_CLASSES, width=1)
        logits = torch.empty(s.n, LOSS_CLASSES, s.h, s.w, device="meta", dtype=s.dtype,
                             requires_grad=True)
        aux = torch.empty_like(logits).requires_grad_()
        y = torch.empty(s.n, *crop(s), device="meta", dtype=torch.long)
        with recording(132, 90) as rec:
            _, main, _ = model._fused_losses(logits, aux, y, fused_loss_options(model.criterion))
            main.backward()
        return [rec.launches[0], rec.launches[2]]

    same = {}
    # (the heads in NCHW only: on meta tensors F.conv2d returns a channels_last input's conv
    # contiguous, where the workloads follow cuDNN's channels_last output)
    for workload, layout in [("ppm", "nchw"), ("ppm", "nhwc"), ("ppm-train", "nchw"),
                             ("ppm-train", "nhwc"), ("head", "nchw"), ("head-xlast", "nchw"),
                             ("head-1x1", "nchw"), ("psphead", "nchw"), ("loss", "nchw")]:
        s = Shape(2, 64, 13, 17, torch.bfloat16, layout)
        ours = record_workload(workload, s, 132, 90)
        theirs = pspnet_loss_launches(s) if workload == "loss" else pspnet_launches(workload, s)
        same[f"{workload} {layout}"] = [len(ours), len(theirs), key(ours) == key(theirs)]
    print(json.dumps(same))
    """
)


def test_workloads_launch_what_pspnet_launches():
    """The report's workloads, written with psp_kernels' own ops, launch exactly the kernels,
    grids and arguments that pspnet's PPM (eval and training), concat-free head (3x3, x last,
    1x1), converted third-party heads (``pspnet.convert``, eval) and fused training loss launch."""
    proc = subprocess.run([sys.executable, "-c", SAME_AS_PSPNET], capture_output=True,
                          text=True, env=_env(), cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    same = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(same) == 9
    for case, (ours, theirs, equal) in same.items():
        assert ours > 0 and ours == theirs and equal, f"{case}: {ours} vs {theirs} launches"


ATOMICS = textwrap.dedent(
    """
    import json, triton, triton.language as tl
    from psp_kernels.analysis import machine, report

    @triton.jit
    def add_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.atomic_add(y_ptr + offs, tl.load(x_ptr + offs))

    @triton.jit
    def copy_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs))

    out = {}
    for k in (add_kernel, copy_kernel):
        src = {"module": "__main__", "kernel": k.fn.__name__,
               "signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"},
               "constexprs": {(2,): 128}, "attrs": {}, "options": {"num_warps": 4}, "arch": 90}
        m = machine.analyse(src)
        out[k.fn.__name__] = [m.get("error"), report.uses_atomics(m["sass"])]
    print(json.dumps(out))
    """
)


def test_atomics_in_machine_code_are_found(tmp_path):
    """Determinism is checked where it can be seen: the interpreter runs programs one at a time,
    so two runs there are equal by construction; the report reads the compiled sm_90 code, where
    an atomic add shows (the CI gate fails on it for every launch of the workloads)."""
    script = tmp_path / "atomics.py"  # @triton.jit needs its kernels in a file
    script.write_text(ATOMICS)
    env = dict(_env(), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"add_kernel": [None, True], "copy_kernel": [None, False]}


def test_workload_cli_reports_findings_and_exit_code():
    cmd = [sys.executable, "-m", "psp_kernels.compile_check", "--workload", "ppm", "--n", "1"]
    cmd += ["--c", "64", "--hw", "13", "17", "--dtype", "fp32", "--arch", "90", "--jobs", "1"]
    env = dict(os.environ, TRITON_INTERPRET="1")  # the check leaves the interpreter itself
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    out = proc.stdout + proc.stderr
    assert "_pool_cells_kernel" in out and "H100" in out and "x ideal" in out, out
    assert "estimates" in out
    findings = [line for line in out.splitlines() if line.strip().startswith("FINDING")]
    assert proc.returncode == (1 if findings else 0), out
    warn = subprocess.run(cmd + ["--warn-only"], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=600)  # fmt: skip
    assert warn.returncode == 0, warn.stdout + warn.stderr


@pytest.mark.parametrize(
    "shape, dtype, channels_last, widest",
    [
        ((8, 512, 60, 60), torch.bfloat16, False, 16),  # 7200-byte planes: 16-byte aligned
        ((8, 512, 90, 90), torch.bfloat16, False, 8),  # 16200-byte planes
        ((8, 512, 90, 90), torch.float32, False, 16),
        ((1, 2048, 61, 61), torch.bfloat16, False, 2),
        ((1, 2048, 61, 61), torch.bfloat16, True, 16),  # 4096-byte pixels
    ],
)
def test_widest_vector(shape, dtype, channels_last, widest):
    """The access rule's 'a 16-byte access would fit': a plane's run, never across channels."""
    t = torch.empty(shape, dtype=dtype, device="meta")
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    assert TensorArg.of(t).widest_vector() == widest
    if not channels_last:  # 7-wide rows start misaligned
        assert TensorArg.of(t[:, :, :, :7]).widest_vector() <= 8
