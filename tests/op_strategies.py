"""Hypothesis strategies for the randomized tests of the four public ops (tests/test_ops_random.py).

A drawn case is plain data (sizes, strides, bins, flags and a seed for the values), so a failing
example prints readably and shrinks; :func:`make_tensor` turns a shape and a :class:`Layout` into
a leaf tensor and the strided view of it that the op receives.

* :func:`ppc_cases`, :func:`uc_cases`, :func:`sua_cases`: valid arguments of
  ``pyramid_pool_conv`` / ``pyramid_pooling``, ``upsample_concat`` and ``shifted_upsample_add``.
* :func:`mutations`: one change that makes such arguments invalid by the contract
  (/work/shared/CONTRACT.md), with the error it must raise and the argument its message must name
  (:func:`apply_mutation`).

Example counts are bounded for CI time (the kernels run through Triton's interpreter) and the
examples are derandomized, so every run tries the same inputs. For a longer local search:
``PSP_FUZZ_EXAMPLES=<k>`` multiplies the counts, ``PSP_FUZZ_RANDOM=1`` draws fresh examples,
``PSP_FUZZ_SHRINK=1`` shrinks a failure (see :func:`fuzz_settings`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

F64 = torch.float64

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


def fuzz_settings(max_examples: int):
    """Bounded, reproducible settings: a fixed example sequence, no example database, no deadline
    (the interpreter's first call of a new shape compiles), ``PSP_FUZZ_EXAMPLES`` as a multiplier.

    No shrinking by default: under the interpreter it can take many minutes, past the CI budget;
    a failure prints the example as found. ``PSP_FUZZ_SHRINK=1`` shrinks it (locally);
    ``PSP_FUZZ_RANDOM=1`` draws new examples on every run instead of the fixed sequence."""
    scale = max(1, int(os.environ.get("PSP_FUZZ_EXAMPLES", "1")))
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("PSP_FUZZ_SHRINK", "0") != "0":
        phases.append(Phase.shrink)
    return settings(
        phases=phases,
        max_examples=max_examples * scale,
        deadline=None,
        derandomize=os.environ.get("PSP_FUZZ_RANDOM", "0") == "0",
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ----------------------------------------------------------------------------------------------
# Strided tensors
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a view of a given shape sits in memory.

    ``perm``: the order of the dimensions in memory, outermost first ((0, 2, 3, 1) is
    channels_last); ``step``/``offset``: each dimension is a slice ``offset::step`` of a larger
    buffer (non-contiguous strides); ``expand``: dimensions broadcast from size 1 (stride 0).
    """

    perm: tuple[int, ...]
    step: tuple[int, ...]
    offset: tuple[int, ...]
    expand: tuple[bool, ...] = ()

    def describe(self) -> str:
        return f"perm={self.perm} step={self.step} offset={self.offset} expand={self.expand}"


def contiguous(ndim: int) -> Layout:
    return Layout(tuple(range(ndim)), (1,) * ndim, (0,) * ndim, (False,) * ndim)


@st.composite
def layouts(draw, ndim: int, allow_expand: bool = True) -> Layout:
    """Contiguous, channels_last (for 4-d), any permutation, slices and (rarely) broadcasts."""
    kind = draw(st.sampled_from(["contiguous", "channels_last", "random"]))
    if kind == "contiguous":
        return contiguous(ndim)
    if kind == "channels_last" and ndim == 4:
        return Layout((0, 2, 3, 1), (1,) * 4, (0,) * 4, (False,) * 4)
    perm = tuple(draw(st.permutations(range(ndim))))
    step = tuple(draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=ndim, max_size=ndim)))
    offset = tuple(draw(st.lists(st.integers(0, 1), min_size=ndim, max_size=ndim)))
    if allow_expand:
        expand = tuple(
            draw(st.lists(st.sampled_from([False] * 5 + [True]), min_size=ndim, max_size=ndim))
        )
    else:
        expand = (False,) * ndim
    return Layout(perm, step, offset, expand)


def make_tensor(shape, layout: Layout, gen: torch.Generator, *, requires_grad=False, lo=None):
    """``(leaf, view)``: a fresh float64 buffer laid out as ``layout`` and the ``shape`` view of it.

    Gradients are compared on ``leaf`` (a broadcast dimension sums there, on both paths alike).
    ``lo``: draw uniform values in ``[lo, lo + 1)`` instead of normal ones.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    expand = layout.expand or (False,) * ndim
    sizes = []
    for d in range(ndim):
        if expand[d]:
            sizes.append(1)
        else:
            sizes.append(layout.offset[d] + (shape[d] - 1) * layout.step[d] + 1)
    mem = [sizes[p] for p in layout.perm]
    if lo is None:
        leaf = torch.randn(mem, generator=gen, dtype=F64)
    else:
        leaf = torch.rand(mem, generator=gen, dtype=F64) + lo
    leaf.requires_grad_(requires_grad)
    inverse = [0] * ndim
    for i, p in enumerate(layout.perm):
        inverse[p] = i
    view = leaf.permute(inverse)
    index = tuple(
        slice(0, 1) if expand[d] else slice(layout.offset[d], None, layout.step[d])
        for d in range(ndim)
    )
    view = view[index].expand(shape)
    assert view.shape == shape, (view.shape, shape)
    return leaf, view


# ----------------------------------------------------------------------------------------------
# Launch knobs (the launchers' test hooks: several programs per pixel range under the interpreter)
# ----------------------------------------------------------------------------------------------


@st.composite
def ppc_knobs(draw) -> dict:
    """``{(module, attribute): value}`` of the hooks of kernel 1 (and of kernel 2, which
    ``pyramid_pooling`` also launches); the GPU tile sizes when every one is forced (the
    launchers then never ask for the SM count, which needs a GPU)."""
    splits = draw(st.sampled_from([None, None, 2, 3]))
    dx_pixels = draw(st.sampled_from([None, None, 24, 100]))
    pixels = draw(st.sampled_from([None, None, 64, 150]))
    knobs = {
        ("ppc", "FORCE_SPLITS"): splits,
        ("ppc", "FORCE_DX_PIXELS"): dx_pixels,
        ("uc", "FORCE_PIXELS"): pixels,
    }
    forced = None not in (splits, dx_pixels, pixels)
    knobs[("utils", "GPU_TILES")] = bool(forced and draw(st.booleans()))
    return knobs


@st.composite
def uc_knobs(draw) -> dict:
    pixels = draw(st.sampled_from([None, None, 64, 150]))
    knobs = {("uc", "FORCE_PIXELS"): pixels}
    knobs[("utils", "GPU_TILES")] = bool(pixels is not None and draw(st.booleans()))
    return knobs


# ----------------------------------------------------------------------------------------------
# Valid cases
# ----------------------------------------------------------------------------------------------


@dataclass
class PPCCase:
    """Arguments of ``pyramid_pool_conv`` (and ``pyramid_pooling``, with ``align_corners``)."""

    n: int
    c: int
    h: int
    w: int
    bins: object  # tuple, list or (one bin) a plain int
    rs: list[int]
    weight_4d: list[bool]
    x_layout: Layout
    w_layouts: list[Layout]
    scale: bool
    shift: bool
    relu: bool
    align_corners: bool
    backend: str
    grad_x: bool
    grad_params: bool
    grad_layout: Layout
    used_outputs: list[bool]  # which of pyramid_pool_conv's outputs the loss uses
    knobs: dict
    as_tuple: bool  # tensor lists passed as tuples
    seed: int

    @property
    def bin_list(self) -> list[int]:
        return [self.bins] if isinstance(self.bins, int) else list(self.bins)


@st.composite
def bin_sets(draw, h: int, w: int):
    """1-5 bins (any order, duplicates allowed; two launch groups past 4), some larger than the
    map, as a tuple, a list or (for one bin) a plain int."""
    big = max(h, w) + 4
    one = st.one_of(st.integers(1, 6), st.integers(1, min(big, 16)))
    bins = draw(st.lists(one, min_size=1, max_size=5))
    form = draw(st.sampled_from(["tuple", "list", "int"]))
    if form == "int" and len(bins) == 1:
        return bins[0]
    return tuple(bins) if form == "tuple" else bins


@st.composite
def ppc_cases(draw, *, small: bool = False) -> PPCCase:
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 6 if small else 24))
    h = draw(st.integers(1, 6 if small else 20))
    w = draw(st.integers(1, 6 if small else 20))
    bins = draw(bin_sets(h, w))
    k = 1 if isinstance(bins, int) else len(bins)
    rs = draw(st.lists(st.integers(1, 12), min_size=k, max_size=k))
    return PPCCase(
        n=n, c=c, h=h, w=w, bins=bins, rs=rs,
        weight_4d=draw(st.lists(st.booleans(), min_size=k, max_size=k)),
        x_layout=draw(layouts(4)),
        w_layouts=draw(st.lists(layouts(2), min_size=k, max_size=k)),
        scale=draw(st.booleans()), shift=draw(st.booleans()), relu=draw(st.booleans()),
        align_corners=draw(st.booleans()),
        backend=draw(st.sampled_from(["triton", "triton", "auto"])),
        grad_x=draw(st.booleans()), grad_params=draw(st.booleans()),
        grad_layout=draw(layouts(4)),
        used_outputs=draw(st.lists(st.sampled_from([True, True, False]), min_size=k, max_size=k)),
        knobs=draw(ppc_knobs()),
        as_tuple=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip


@dataclass
class UCCase:
    """Arguments of ``upsample_concat``."""

    n: int
    c: int
    h: int
    w: int
    branch_sizes: list[tuple[int, int, int]]  # (R, h, w)
    x_layout: Layout
    b_layouts: list[Layout]
    align_corners: bool
    backend: str
    grad_x: bool
    grad_branches: bool
    grad_layout: Layout
    knobs: dict
    as_tuple: bool  # tensor lists passed as tuples
    seed: int


@st.composite
def uc_cases(draw, *, small: bool = False) -> UCCase:
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 6 if small else 24))
    h = draw(st.integers(1, 6 if small else 20))
    w = draw(st.integers(1, 6 if small else 20))
    # 0-5 branches (two launch groups past 4), any sizes: 1x1, non-square, larger than x
    side = st.one_of(st.integers(1, 6), st.integers(1, 24))
    size = st.tuples(st.integers(1, 10), side, side)
    sizes = draw(st.lists(size, min_size=0, max_size=5))
    return UCCase(
        n=n, c=c, h=h, w=w, branch_sizes=sizes,
        x_layout=draw(layouts(4)),
        b_layouts=draw(st.lists(layouts(4), min_size=len(sizes), max_size=len(sizes))),
        align_corners=draw(st.booleans()),
        backend=draw(st.sampled_from(["triton", "triton", "auto"])),
        grad_x=draw(st.booleans()), grad_branches=draw(st.booleans()),
        grad_layout=draw(layouts(4)),
        knobs=draw(uc_knobs()),
        as_tuple=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip


@dataclass
class SUACase:
    """Arguments of ``shifted_upsample_add``."""

    n: int
    o: int
    h: int
    w: int
    map_sizes: list[tuple[int, int]]
    base_layout: Layout
    m_layouts: list[Layout]
    align_corners: bool
    backend: str
    grad_base: bool
    grad_maps: bool
    grad_layout: Layout
    as_tuple: bool  # tensor lists passed as tuples
    seed: int


@st.composite
def sua_cases(draw, *, small: bool = False) -> SUACase:
    n = draw(st.integers(1, 2))
    o = draw(st.integers(1, 4 if small else 10))
    h = draw(st.integers(1, 6 if small else 20))
    w = draw(st.integers(1, 6 if small else 20))
    # 1-4 maps; their sizes often sum to about the kernels' single tile (3 * sum(h) <= 64,
    # 3 * sum(w) <= 64: a sum of 21 fits, 22 does not), in one direction or both
    side = st.one_of(st.integers(1, 6), st.integers(1, 12), st.integers(18, 23))
    sizes = draw(st.lists(st.tuples(side, side), min_size=1, max_size=4))
    return SUACase(
        n=n, o=o, h=h, w=w, map_sizes=sizes,
        base_layout=draw(layouts(4)),
        m_layouts=draw(st.lists(layouts(5), min_size=len(sizes), max_size=len(sizes))),
        align_corners=draw(st.booleans()),
        backend=draw(st.sampled_from(["triton", "triton", "auto"])),
        grad_base=draw(st.booleans()), grad_maps=draw(st.booleans()),
        grad_layout=draw(layouts(4)),
        as_tuple=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Building the arguments of a case
# ----------------------------------------------------------------------------------------------


@dataclass
class Built:
    """A case's call arguments (``args``) and the leaves its gradients are compared on."""

    args: dict
    leaves: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def leaf(self, name, leaf, requires_grad):
        if requires_grad:
            self.leaves.append(leaf)
            self.names.append(name)


def build_ppc(case: PPCCase, *, grads: bool = True) -> Built:
    gen = torch.Generator().manual_seed(case.seed)
    gx, gp = grads and case.grad_x, grads and case.grad_params
    leaf, x = make_tensor((case.n, case.c, case.h, case.w), case.x_layout, gen, requires_grad=gx)
    out = Built(args={})
    out.leaf("x", leaf, gx)
    weights = []
    for i, (r, four, lay) in enumerate(zip(case.rs, case.weight_4d, case.w_layouts, strict=True)):
        leaf, wt = make_tensor((r, case.c), lay, gen, requires_grad=gp)
        wt = wt / case.c**0.5
        if four:
            wt = wt[:, :, None, None]
        out.leaf(f"weights[{i}]", leaf, gp)
        weights.append(wt)
    affine = {}
    for label, on, lo in (("scale", case.scale, 0.5), ("shift", case.shift, None)):
        if not on:
            affine[label] = None
            continue
        values = []
        for i, r in enumerate(case.rs):
            # contiguous, every other element of a longer buffer, or one value broadcast
            variant = (i + case.seed) % 3
            lay = Layout((0,), (1 + (variant == 1),), (i % 2,), (variant == 2,))
            leaf, t = make_tensor((r,), lay, gen, requires_grad=gp, lo=lo)
            out.leaf(f"{label}[{i}]", leaf, gp)
            values.append(t)
        affine[label] = values
    seq = tuple if case.as_tuple else list
    for label in ("scale", "shift"):
        if affine[label] is not None:
            affine[label] = seq(affine[label])
    out.args = dict(
        x=x, weights=seq(weights), bins=case.bins, scale=affine["scale"], shift=affine["shift"],
        relu=case.relu, align_corners=case.align_corners, backend=case.backend,
    )  # fmt: skip
    return out


def build_uc(case: UCCase, *, grads: bool = True) -> Built:
    gen = torch.Generator().manual_seed(case.seed)
    gx, gb = grads and case.grad_x, grads and case.grad_branches
    leaf, x = make_tensor((case.n, case.c, case.h, case.w), case.x_layout, gen, requires_grad=gx)
    out = Built(args={})
    out.leaf("x", leaf, gx)
    branches = []
    for i, ((r, bh, bw), lay) in enumerate(zip(case.branch_sizes, case.b_layouts, strict=True)):
        leaf, y = make_tensor((case.n, r, bh, bw), lay, gen, requires_grad=gb)
        out.leaf(f"branches[{i}]", leaf, gb)
        branches.append(y)
    branches = tuple(branches) if case.as_tuple else branches
    out.args = dict(x=x, branches=branches, align_corners=case.align_corners, backend=case.backend)
    return out


def build_sua(case: SUACase, *, grads: bool = True) -> Built:
    gen = torch.Generator().manual_seed(case.seed)
    gb, gm = grads and case.grad_base, grads and case.grad_maps
    shape = (case.n, case.o, case.h, case.w)
    leaf, base = make_tensor(shape, case.base_layout, gen, requires_grad=gb)
    out = Built(args={})
    out.leaf("base", leaf, gb)
    maps = []
    for i, ((mh, mw), lay) in enumerate(zip(case.map_sizes, case.m_layouts, strict=True)):
        leaf, m = make_tensor((case.n, 9, case.o, mh, mw), lay, gen, requires_grad=gm)
        out.leaf(f"maps[{i}]", leaf, gm)
        maps.append(m)
    maps = tuple(maps) if case.as_tuple else maps
    out.args = dict(base=base, maps=maps, align_corners=case.align_corners, backend=case.backend)
    return out


# ----------------------------------------------------------------------------------------------
# Invalid arguments: one mutation of a valid case
# ----------------------------------------------------------------------------------------------

#: Mutation kinds per op family. "ppc" covers pyramid_pool_conv and pyramid_pooling (one
#: validation); each kind is implemented in :func:`apply_mutation`.
X_KINDS = ["x_not_tensor", "x_rank", "x_empty", "x_dtype", "x_other_float", "x_device"]
PPC_KINDS = X_KINDS + [
    "weights_not_list", "weights_count", "weight_not_tensor", "weight_c", "weight_rank",
    "weight_zero_r", "weight_dtype", "weight_other_float", "weight_device",
    "bins_value", "bins_type", "bins_container", "bins_empty",
    "affine_not_list", "affine_count", "affine_not_tensor", "affine_shape", "affine_dtype",
    "affine_other_float", "affine_device", "backend",
]  # fmt: skip
UC_KINDS = X_KINDS + [
    "branches_not_list", "branch_not_tensor", "branch_rank", "branch_n", "branch_empty",
    "branch_dtype", "branch_other_float", "branch_device", "backend",
]  # fmt: skip
SUA_KINDS = [
    "base_not_tensor", "base_rank", "base_empty", "base_dtype", "base_other_float",
    "base_device", "maps_not_list", "maps_empty", "map_not_tensor", "map_rank", "map_taps",
    "map_n", "map_o", "map_empty", "map_dtype", "map_other_float", "map_device", "backend",
]  # fmt: skip
KINDS = {"ppc": PPC_KINDS, "uc": UC_KINDS, "sua": SUA_KINDS}


@dataclass(frozen=True)
class Mutation:
    """``kind``, and free integers that pick an element (``index``) and a variant of it."""

    kind: str
    index: int
    variant: int
    amount: int


def mutations(family: str, kind: str | None = None):
    """Mutations of ``family``'s arguments: of one ``kind``, or any."""
    return st.builds(
        Mutation,
        kind=st.just(kind) if kind is not None else st.sampled_from(KINDS[family]),
        index=st.integers(0, 7),
        variant=st.integers(0, 7),
        amount=st.integers(1, 3),
    )


@dataclass
class Expected:
    """The error a mutated call must raise: its type, a regex naming the argument, and (for shape
    errors) a fragment of the expected shape the message must show."""

    error: type
    names: str
    shape: str | None = None

    def check(self, exc: BaseException) -> str | None:
        """Why ``exc`` is not the expected error, or ``None``."""
        if type(exc) is not self.error:
            return f"raised {type(exc).__name__}, expected {self.error.__name__}"
        msg = str(exc)
        if not re.search(self.names, msg):
            return f"message {msg!r} does not name the argument ({self.names})"
        if self.shape is not None and self.shape not in msg:
            return f"message {msg!r} does not give the expected shape {self.shape!r}"
        return None


NON_FLOAT = [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex128, torch.int16]
OTHER_FLOAT = [torch.float32, torch.float16, torch.bfloat16]


def _pick(seq, i):
    return seq[i % len(seq)]


def _not_tensor(t: torch.Tensor, variant: int):
    """Not a tensor: its values as nested lists or a numpy array, None, a float, a string."""
    options = [t.tolist, t.detach().numpy, lambda: None, lambda: 1.0, lambda: "tensor"]
    return _pick(options, variant)()


def _bad_rank(t: torch.Tensor, variant: int, ok: int) -> torch.Tensor:
    """``t`` with a rank other than ``ok`` (leading or trailing dimensions added or removed)."""
    options = []
    if t.dim() > 0:
        options += [t[0], t.reshape(-1)]
    options += [t[None], t[..., None], t.reshape(())[None][0] if t.numel() == 1 else t.sum()]
    options = [o for o in options if o.dim() != ok]
    return _pick(options, variant)


def _empty_like_shape(shape, index: int) -> torch.Tensor:
    shape = list(shape)
    shape[index % len(shape)] = 0
    return torch.empty(shape, dtype=F64)


def _x_mutation(args: dict, m: Mutation, name: str, rank_shape: str, first_other: str | None):
    """Mutations of the main input (``x`` or ``base``); ``first_other``: the argument the
    validation compares it against first (the one whose message names both), if any."""
    t = args[name]
    if m.kind.endswith("not_tensor"):
        args[name] = _not_tensor(t, m.variant)
        return Expected(TypeError, rf"\b{name}\b")
    if m.kind.endswith("rank"):
        args[name] = _bad_rank(t, m.variant, 4)
        return Expected(ValueError, rf"\b{name}\b", rank_shape)
    if m.kind.endswith("empty"):
        args[name] = _empty_like_shape(t.shape, m.index)
        return Expected(ValueError, rf"\b{name}\b")
    if m.kind.endswith("_dtype"):
        args[name] = t.to(_pick(NON_FLOAT, m.variant))
        return Expected(TypeError, rf"\b{name}\b.*floating")
    if m.kind.endswith("other_float"):
        args[name] = t.to(_pick(OTHER_FLOAT, m.variant))
        if first_other is None:  # nothing to compare against: a valid float input
            return None
        return Expected(TypeError, rf"{re.escape(first_other)}.*dtype.*\b{name}\b")
    if m.kind.endswith("device"):
        args[name] = t.to("meta")
        if first_other is None:
            return None
        return Expected(ValueError, rf"{re.escape(first_other)}.*\b{name}\b.*meta")
    raise AssertionError(m.kind)


def _list_mutation(args, m, key, what, element_rank, shape_of, first_other=None):
    """Mutations of a list-of-tensors argument (``weights``, ``branches``, ``maps``):
    ``shape_of(i)``: the expected-shape fragment of element ``i``'s error."""
    lst = list(args[key])
    kind = m.kind
    if kind.endswith("not_list"):
        first = lst[0] if lst else torch.zeros(1, dtype=F64)
        args[key] = _pick(
            [first, None, {0: first}, iter(lst), "w", 3, torch.stack([first, first])], m.variant
        )
        return Expected(TypeError, rf"\b{key}\b.*list or tuple")
    if not lst:
        return None  # the element mutations need an element (an empty branch list is valid)
    i = m.index % len(lst)
    name = rf"{key}\[{i}\]"
    t = lst[i]
    if kind.endswith("not_tensor"):
        lst[i] = _not_tensor(t, m.variant)
        args[key] = _pick([lst, tuple(lst)], m.amount)
        return Expected(TypeError, name)
    if kind.endswith("rank"):
        lst[i] = _bad_rank(t, m.variant, element_rank)
        args[key] = lst
        return Expected(ValueError, name, shape_of(i))
    if kind.endswith("empty"):
        dims = list(range(1, t.dim()))  # keep N (an N mismatch is its own kind)
        lst[i] = _empty_like_shape(t.shape, dims[m.index % len(dims)] if dims else 0)
        args[key] = lst
        return Expected(ValueError, name)
    if kind.endswith("_dtype"):
        lst[i] = t.to(_pick(NON_FLOAT, m.variant))
        args[key] = lst
        return Expected(TypeError, name + r".*floating")
    if kind.endswith("other_float"):
        lst[i] = t.to(_pick(OTHER_FLOAT, m.variant))
        args[key] = lst
        return Expected(TypeError, name + rf".*dtype.*\b{first_other}\b")
    if kind.endswith("device"):
        lst[i] = t.to("meta")
        args[key] = lst
        return Expected(ValueError, name + rf".*meta.*\b{first_other}\b")
    raise AssertionError(kind)


def _resize(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = size
    return torch.randn(shape, dtype=t.dtype)


def _other_size(size: int, m: Mutation) -> int:
    """A size other than ``size`` (never 0: emptiness is its own kind)."""
    if size > m.amount and m.variant % 2:
        return size - m.amount
    return size + m.amount


def apply_mutation(family: str, args: dict, m: Mutation) -> Expected | None:
    """Change ``args`` (a built valid case) by ``m``; return the error the call must raise, or
    ``None`` when this mutation does not apply to this case (e.g. no scale to change)."""
    kind = m.kind
    if kind == "backend":
        args["backend"] = _pick(
            ["cuda", "gpu", "", None, "Triton", "torch", 1, ["auto"]], m.variant
        )
        return Expected(ValueError, r"\bbackend\b")
    if family == "sua":
        return _sua_mutation(args, m)
    x = args["x"]
    n, c = x.shape[:2]
    if kind.startswith("x_"):
        if family == "ppc":
            other = "weights[0]"
        else:
            other = "branches[0]" if args["branches"] else None
        return _x_mutation(args, m, "x", "(N, C, H, W)", other)
    if family == "uc":
        if kind == "branch_n":
            lst = list(args["branches"])
            if not lst:
                return None
            i = m.index % len(lst)
            lst[i] = _resize(lst[i], 0, _other_size(n, m))
            args["branches"] = lst
            return Expected(ValueError, rf"branches\[{i}\]", f"({n}, R, h, w)")
        return _list_mutation(
            args, m, "branches", "tensors", 4, lambda i: "(N, R, h, w)", first_other="x"
        )
    return _ppc_mutation(args, m, n, c)


def _ppc_mutation(args: dict, m: Mutation, n: int, c: int) -> Expected | None:
    kind = m.kind
    weights = list(args["weights"])
    k = len(weights)
    bins = [args["bins"]] if isinstance(args["bins"], int) else list(args["bins"])
    if kind in ("weights_not_list", "weight_not_tensor", "weight_dtype", "weight_other_float",
                "weight_device"):  # fmt: skip
        key_kind = kind.replace("weight_", "weights_") if kind.startswith("weight_") else kind
        return _list_mutation(
            args, Mutation(key_kind, m.index, m.variant, m.amount), "weights", "tensors", 2,
            lambda i: f"(R, {c})", first_other="x",
        )  # fmt: skip
    if kind == "weights_count":
        if m.variant % 2 and k > 1:
            args["weights"] = weights[: k - min(m.amount, k - 1)]
        else:
            args["weights"] = weights + weights[: m.amount]
        return Expected(ValueError, r"\bweights\b.*one tensor per bin")
    i = m.index % k
    r = weights[i].shape[0]
    if kind == "weight_c":
        wrong = _other_size(c, m)
        four = weights[i].dim() == 4
        weights[i] = torch.randn((r, wrong, 1, 1) if four else (r, wrong), dtype=F64)
        args["weights"] = weights
        return Expected(ValueError, rf"weights\[{i}\]", f"(R, {c})")
    if kind == "weight_rank":
        options = [(r,), (r, c, 1), (r, c, 3, 3), (r, c, 1, 2), (r, c, 2, 1), (r, c, 1, 1, 1),
                   (1, r, c), (r * c,)]  # fmt: skip
        weights[i] = torch.randn(_pick(options, m.variant), dtype=F64)
        args["weights"] = weights
        return Expected(ValueError, rf"weights\[{i}\]", f"(R, {c})")
    if kind == "weight_zero_r":
        weights[i] = torch.empty((0, c, 1, 1) if m.variant % 2 else (0, c), dtype=F64)
        args["weights"] = weights
        return Expected(ValueError, rf"weights\[{i}\]")
    if kind == "bins_value":
        bins[i] = _pick([0, -1, -m.amount, -100], m.variant)
        args["bins"] = _pick([tuple(bins), bins], m.amount)
        return Expected(ValueError, r"\bbins\b.*positive")
    if kind == "bins_type":
        bins[i] = _pick([float(bins[i]), 2.5, True, False, str(bins[i]), None,
                         torch.tensor(bins[i]), np.float64(bins[i])], m.variant)  # fmt: skip
        args["bins"] = _pick([tuple(bins), bins], m.amount)
        return Expected(TypeError, r"\bbins\b")
    if kind == "bins_container":
        options = [str(bins[0]), None, float(bins[0]), set(bins), frozenset(bins)]
        options += [torch.tensor(bins), {b: b for b in bins}, 2.0]
        args["bins"] = _pick(options, m.variant)
        return Expected(TypeError, r"\bbins\b")
    if kind == "bins_empty":
        args["bins"] = _pick([(), []], m.variant)
        if m.amount == 1:
            args["weights"] = []
        return Expected(ValueError, r"\bbins\b")
    if kind.startswith("affine_"):
        return _affine_mutation(args, m, bins, weights)
    raise AssertionError(kind)


def _affine_mutation(args: dict, m: Mutation, bins, weights) -> Expected | None:
    label = "scale" if m.amount % 2 else "shift"
    k = len(bins)
    values = args[label]
    if values is None:
        values = [torch.ones(w.shape[0], dtype=F64) for w in weights]
    values = list(values)
    i = m.index % k
    r = weights[i].shape[0]
    name = rf"{label}\[{i}\]"
    kind = m.kind
    if kind == "affine_not_list":
        args[label] = _pick([values[0], torch.stack(values) if len(set(weights_r(weights))) == 1
                             else values[0], 1.0, "s", iter(values)], m.variant)  # fmt: skip
        return Expected(TypeError, rf"\b{label}\b.*list or tuple")
    if kind == "affine_count":
        if m.variant % 2 and k > 1:
            args[label] = values[: k - 1]
        elif m.variant % 3 == 0:
            args[label] = []
        else:
            args[label] = values + values[:1]
        return Expected(ValueError, rf"\b{label}\b.*one tensor per bin")
    if kind == "affine_not_tensor":
        values[i] = _not_tensor(values[i], m.variant)
        args[label] = values
        return Expected(TypeError, name)
    if kind == "affine_shape":
        options = [(r + 1,), (r, 1), (), (1, r), (r, r)]
        if r > 1:
            options.append((r - 1,))
        values[i] = torch.ones(_pick(options, m.variant), dtype=F64)
        args[label] = values
        return Expected(ValueError, name, f"({r},)")
    if kind == "affine_dtype":
        values[i] = values[i].to(_pick(NON_FLOAT, m.variant))
        args[label] = values
        return Expected(TypeError, name + r".*floating")
    if kind == "affine_other_float":
        values[i] = values[i].to(_pick(OTHER_FLOAT, m.variant))
        args[label] = values
        return Expected(TypeError, name + r".*dtype.*\bx\b")
    if kind == "affine_device":
        values[i] = values[i].to("meta")
        args[label] = values
        return Expected(ValueError, name + r".*meta.*\bx\b")
    raise AssertionError(kind)


def weights_r(weights) -> list[int]:
    return [int(w.shape[0]) for w in weights]


def _sua_mutation(args: dict, m: Mutation) -> Expected | None:
    base = args["base"]
    n, o = base.shape[:2]
    kind = m.kind
    if kind.startswith("base_"):
        return _x_mutation(args, m, "base", "(N, O, H, W)", "maps[0]")
    if kind == "maps_empty":
        args["maps"] = _pick([[], ()], m.variant)
        return Expected(ValueError, r"\bmaps\b")
    maps = list(args["maps"])
    i = m.index % len(maps)
    shape = f"({n}, 9, {o}, h, w)"
    if kind == "map_taps":
        # (1 tap is the valid one-tap form when every map has it; test_shifted_upsample_add
        # checks a mix)
        maps[i] = _resize(maps[i], 1, _pick([2, 3, 8, 10, 4, 18], m.variant))
        args["maps"] = maps
        return Expected(ValueError, rf"maps\[{i}\]", shape)
    if kind in ("map_n", "map_o"):
        dim = 0 if kind == "map_n" else 2
        maps[i] = _resize(maps[i], dim, _other_size(maps[i].shape[dim], m))
        args["maps"] = maps
        return Expected(ValueError, rf"maps\[{i}\]", shape)
    if kind == "map_rank":
        # a dropped tap or channel dimension, or an extra one
        t = maps[i]
        options = [t[:, 0], t[:, :, 0], t[None], t[..., None], t.reshape(n, 9 * o, *t.shape[3:])]
        maps[i] = _pick(options, m.variant)
        args["maps"] = maps
        return Expected(ValueError, rf"maps\[{i}\]", shape)
    if kind == "map_empty":
        t = maps[i]
        maps[i] = _empty_like_shape(t.shape, 3 + m.index % 2)
        args["maps"] = maps
        return Expected(ValueError, rf"maps\[{i}\]", shape)
    key_kind = kind.replace("map_", "maps_") if kind.startswith("map_") else kind
    return _list_mutation(
        args, Mutation(key_kind, m.index, m.variant, m.amount), "maps", "tensors", 5,
        lambda i: shape, first_other="base",
    )  # fmt: skip
