"""``python -m psp_kernels.compile_check --workload ...``: the workload report on the command line."""

from __future__ import annotations

import collections
import itertools
import json
import time

import torch

from . import report
from .workloads import WORKLOADS, Shape

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: The matrix CI checks (issue "See what a GPU would run"): every workload at these sizes.
CI_MATRIX = dict(n=[1, 8, 16], hw=[(60, 60), (90, 90)], dtype=list(DTYPES), layout=["nchw", "nhwc"])
#: ... and at Cityscapes' 1/8 maps (512x1024 crops: 64x128; 1024x2048 whole images: 128x256),
#: where mmseg's PSPNet runs its head.
CITYSCAPES = dict(n=[1, 8], hw=[(64, 128), (128, 256)], dtype=list(DTYPES), layout=["nchw", "nhwc"])
#: Workloads reported at :data:`CITYSCAPES` only in CI (a converted mmseg PSPHead: PSPNet's 60x60
#: and 90x90 maps are the official model's, whose head ``ppm`` / ``head`` cover).
CITYSCAPES_ONLY = ("psphead",)


def add_arguments(parser) -> None:
    group = parser.add_argument_group(
        "workload report", "compile what a workload really launches, read it, model its time"
    )
    group.add_argument(
        "--workload", nargs="+", choices=[*WORKLOADS, "all"], default=None,
        help="record these workloads' launches instead of the generic configurations",
    )  # fmt: skip
    group.add_argument("--n", type=int, nargs="+", default=[8], help="batch sizes (default 8)")
    group.add_argument("--c", type=int, default=2048, help="channels (default 2048)")
    group.add_argument(
        "--hw", type=int, nargs=2, action="append", metavar=("H", "W"),
        help="feature map size; repeat for several (default 60 60)",
    )  # fmt: skip
    group.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["bf16"])
    group.add_argument("--layout", nargs="+", choices=["nchw", "nhwc"], default=["nchw"])
    group.add_argument(
        "--ci", action="store_true",
        help="the CI matrix: N 1 8 16 at 60x60 and 90x90, N 1 8 at 64x128 and 128x256, "
        "bf16/fp16/fp32, nchw and nhwc",
    )  # fmt: skip
    group.add_argument("--rows", action="store_true", help="print every launch's row")
    group.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    group.add_argument("--warn-only", action="store_true", help="print the findings but exit 0")


def _matrix(c, n, hw, dtypes, layouts) -> list[Shape]:
    return [
        Shape(b, c, h, w, DTYPES[d], layout)
        for b, (h, w), d, layout in itertools.product(n, hw, dtypes, layouts)
    ]


def _cases(args, workloads) -> list[tuple[str, Shape]]:
    """The ``(workload, shape)`` pairs to report: the CI matrices with ``--ci`` (every workload
    at :data:`CITYSCAPES`, all but ``psphead``, mmseg's Cityscapes head, at :data:`CI_MATRIX`),
    else every workload at the shapes the options give."""
    if not args.ci:
        shapes = _matrix(args.c, args.n, args.hw or [(60, 60)], args.dtype, args.layout)
        return [(w, s) for w in workloads for s in shapes]
    keys = ("n", "hw", "dtype", "layout")
    psp = _matrix(args.c, *(CI_MATRIX[k] for k in keys))
    city = _matrix(args.c, *(CITYSCAPES[k] for k in keys))
    return [(w, s) for w in workloads if w not in CITYSCAPES_ONLY for s in psp] + [
        (w, s) for w in workloads for s in city
    ]


def _summary(findings: list[str]) -> list[str]:
    """Findings grouped by (workload, kernel, arch, finding kind), with how many shapes."""
    groups = collections.OrderedDict()
    for f in findings:
        head, _, what = f.partition(": ")
        workload, *shape, kernel, arch = head.split(" ")
        kind = what.split(" (")[0]
        groups.setdefault((workload, kernel, arch, kind), []).append(" ".join(shape))
    return [
        f"{w} {k} {a}: {kind} [{len(shapes)} shape(s), e.g. {shapes[0]}]"
        for (w, k, a, kind), shapes in groups.items()
    ]


def run(args) -> int:
    start = time.perf_counter()
    workloads = list(WORKLOADS) if "all" in args.workload else args.workload
    cases = _cases(args, workloads)
    shapes = list(dict.fromkeys(s for _, s in cases))
    rep = report.build(workloads, shapes, archs=tuple(args.arch), jobs=args.jobs, cases=cases)
    if args.rows or len(shapes) <= 4:
        print(report.format_rows(rep.rows))
        print()
    print(report.format_totals(rep.totals))
    print(
        "\nModelled times are estimates of the cost model (benchmarks/README.md, "
        '"The cost model"), not measurements.'
    )
    findings = rep.findings
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"totals": rep.totals, "findings": findings}, f, indent=1)
    print(
        f"\n{len(rep.rows)} launches ({len(workloads)} workloads x {len(shapes)} shapes x "
        f"{len(args.arch)} archs) in {time.perf_counter() - start:.1f} s: "
        f"{len(findings)} findings"
    )
    for line in _summary(findings):
        print(f"  FINDING {line}")
    if findings and args.warn_only:
        print("(--warn-only: findings do not fail the run)")
    return 1 if findings and not args.warn_only else 0
