"""Plan: the arena placement by liveness (no device needed), and a placed chain of launches on a device."""

import numpy as np
import pytest
from conftest import new_plan

from clnet import ops
from clnet.kernels import Argument, Kernel
from clnet.plan import ALIGN, Plan
from clnet.tensor import DeviceTensor


def _launch(plan, global_size, local_size, *args):
    """A launch for placement only, which looks at the arguments of a launch, never at its kernel."""
    arguments = tuple(Argument(f"a{i}", i, False) for i in range(len(args)))
    return plan.launch(Kernel(None, "placement_only", arguments), global_size, local_size, *args)


def _live(v):
    return v.first, v.last


def _roots(plan):
    return [v for v in plan.values if v.root is v]


def check_placement(plan, arena):
    """Every used root lies aligned inside the arena, and roots live at the same time are disjoint."""
    used = [v for v in _roots(plan) if v.first is not None]
    for v in used:
        assert v.base is not None and v.base % ALIGN == 0, v
        assert 0 <= v.base and v.base + v.size <= arena, v
    for i, a in enumerate(used):
        for b in used[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert a.base + a.size <= b.base or b.base + b.size <= a.base, \
                    f"{a} {_live(a)} @{a.base} overlaps {b} {_live(b)} @{b.base}"


@pytest.mark.parametrize("seed", range(12))
def test_place_random_plans(seed):
    """Random plans: values (and views) of odd sizes used by random launches."""
    rng = np.random.default_rng(seed)
    plan = Plan(None)
    values = [plan.value((int(rng.integers(1, 300)),), f"v{i}") for i in range(int(rng.integers(3, 25)))]
    for v in list(values[:len(values) // 3]):
        values.append(v.view((1, v.size)))
    for _ in range(int(rng.integers(1, 30))):
        args = rng.choice(len(values), size=int(rng.integers(1, 4)), replace=False)
        _launch(plan, (64,), (64,), 3, *(values[i] for i in args), 1.5)
    arena = plan.place()
    check_placement(plan, arena)
    for v in values:
        assert v.offset == v.root.base  # a view is its root's memory
    # Not a trivial "everything apart" placement: the arena is never larger than all roots side by side.
    used = [v for v in _roots(plan) if v.first is not None]
    assert arena <= sum(-(-v.size // ALIGN) * ALIGN for v in used)


def test_place_reuses_memory_along_a_chain():
    """x0 -> x1 -> x2 -> x3 -> x4: at most two are live at once, so two slots suffice."""
    plan = Plan(None)
    xs = [plan.value((5, 20), f"x{i}") for i in range(5)]
    for a, b in zip(xs, xs[1:]):
        _launch(plan, (100,), None, a, b)
    arena = plan.place()
    check_placement(plan, arena)
    slot = -(-100 // ALIGN) * ALIGN
    assert arena <= slot + 100
    assert len({x.base for x in xs}) == 2


def test_place_mixed_sizes_share():
    """A big value that dies early leaves room for later ones; a long-lived value keeps its memory."""
    plan = Plan(None)
    keep = plan.value((10,), "kept")
    big = plan.value((1000,), "big")
    small = [plan.value((300,), f"s{i}") for i in range(3)]
    _launch(plan, (1,), None, keep, big)      # 0
    _launch(plan, (1,), None, big, small[0])  # 1: big dies here
    _launch(plan, (1,), None, small[0], small[1])
    _launch(plan, (1,), None, small[1], small[2])
    _launch(plan, (1,), None, small[2], keep)  # keep lives from 0 to 4
    arena = plan.place()
    check_placement(plan, arena)
    reused = [v for v in small[1:] if v.base < big.base + big.size and big.base < v.base + v.size]
    assert reused, "nothing reuses the memory of the value that died early"
    assert arena < 1000 + 3 * 300 + 10


def test_place_views_extend_their_root():
    """A view used late keeps its root alive: nothing live in between may take the root's memory."""
    plan = Plan(None)
    x = plan.value((4, 25), "x")
    a, b, c = (plan.value((100,), n) for n in "abc")
    _launch(plan, (1,), None, x, a)           # 0
    _launch(plan, (1,), None, a, b)           # 1: x is not an argument, but still live
    flat = x.view((100,))
    _launch(plan, (1,), None, b, flat, c)     # 2
    assert (x.first, x.last) == (0, 2)
    assert flat.root is x and flat.first is None    # liveness lives on the root
    arena = plan.place()
    check_placement(plan, arena)
    assert flat.offset == x.offset == x.base
    assert not (b.base < x.base + x.size and x.base < b.base + b.size)


def test_place_alignment_and_unused_values():
    plan = Plan(None)
    vals = [plan.value((n,), f"v{n}") for n in (1, 3, 65, 129, 64)]
    unused = plan.value((10_000,), "never used")
    _launch(plan, (1,), None, *vals)
    arena = plan.place()
    check_placement(plan, arena)
    assert len({v.base for v in vals}) == len(vals)  # all live together
    assert unused.base is None and arena < 10_000
    assert arena == max(v.base + v.size for v in vals)


def test_value_view_must_fit_inside_its_value():
    plan = Plan(None)
    x = plan.value((3, 4), "x")
    with pytest.raises(ValueError):
        x.view((13,))
    with pytest.raises(ValueError):
        x.view((2, 4), offset=5)
    assert x.view((12,)).size == 12
    part = x.view((2, 4), offset=4).view((4,), offset=2)  # offsets add up, memory stays x's
    _launch(plan, (64,), None, part)
    plan.place()
    assert part.root is x and part.offset == x.offset + 6


def test_launch_rounds_global_size():
    plan = Plan(None)
    launch = _launch(plan, (100, 3), (64, 4))
    assert launch.global_size == (128, 4)
    assert _launch(plan, (100,), None).global_size == (100,)


def test_placed_chain_computes_the_right_thing(device, gemm_family):
    """A short network over plan values: intermediate memory is reused, yet the result is right,
    also on a second run with new input. The arena starts as NaN, so a read of memory that was
    handed to another value (or never written) shows."""
    rng = np.random.default_rng(0)
    batch, d_in, d_hidden, d_out = 5, 23, 31, 17
    w1 = rng.uniform(-0.5, 0.5, (d_hidden, d_in)).astype(np.float32)
    b1 = rng.uniform(-0.5, 0.5, d_hidden).astype(np.float32)
    w2 = rng.uniform(-0.5, 0.5, (d_hidden, d_out)).astype(np.float32)
    tw1, tb1, tw2 = (DeviceTensor.from_numpy(device, a) for a in (w1, b1, w2))

    plan = new_plan(device)
    x = plan.value((batch, d_in), "x")
    h1 = plan.value((batch, d_hidden), "h1")
    h2 = plan.value((batch, d_hidden), "h2")
    h3 = plan.value((batch, d_out), "h3")
    s = plan.value((batch, d_out), "s")
    r = plan.value((d_in, d_out), "r")
    out = plan.value((d_in * d_out,), "out")
    ops.gemm(plan, x, tw1, h1, trans_b=True, bias=tb1, act=ops.activation("relu"))          # 0
    ops.activation_forward(plan, ops.activation("sigmoid"), h1, h2)                         # 1
    ops.gemm(plan, h2, tw2, h3, act=ops.activation("tanh"))                                 # 2
    ops.softmax_forward(plan, h3, s)                                                        # 3
    ops.gemm(plan, x, s, r, trans_a=True)                                                   # 4: x is still live
    ops.activation_forward(plan, ops.activation("tanh"), r.view((d_in * d_out,)), out)      # 5
    arena = plan.place()
    check_placement(plan, arena)
    roots = [v for v in plan.values if v.first is not None]
    assert arena < sum(v.size for v in roots)  # memory is shared somewhere
    plan.finalize(arena)

    def reference(xv):
        xv = xv.astype(np.float64)
        a1 = np.maximum(xv @ w1.T + b1, 0)
        a2 = 1 / (1 + np.exp(-a1))
        a3 = np.tanh(a2 @ w2)
        e = np.exp(a3 - a3.max(axis=1, keepdims=True))
        return np.tanh(xv.T @ (e / e.sum(axis=1, keepdims=True))).reshape(-1)

    for _ in range(2):
        xv = rng.normal(size=(batch, d_in)).astype(np.float32)
        plan.arena.fill(np.nan)
        x.tensor().upload(xv)
        plan.run()
        got = out.tensor().download()
        np.testing.assert_allclose(got, reference(xv), rtol=1e-5, atol=1e-6)


def test_arguments_are_set_by_the_names_of_the_kernel_signature(device):
    """Launch.set and bind_dynamic name an argument as the .cl source does (a tensor by its pointer),
    and change what the next run computes."""
    x, y = DeviceTensor.from_numpy(device, np.array([-1, 2, -3, 4], np.float32)), DeviceTensor.empty(device, (4,))
    plan = new_plan(device)
    launch = ops.activation_forward(plan, ops.activation("relu"), x, y)
    assert launch.kernel.names == ["n", "x", "y"]
    plan.bind_dynamic("count", launch, "n")
    plan.finalize(plan.place())
    plan.set_dynamic("count", 2)
    plan.run()
    np.testing.assert_array_equal(y.download()[:2], [0, 2])
    y.fill(7)
    launch.set("x", x.view((2,), 2))  # a tensor argument: its pointer and offset
    plan.run()
    np.testing.assert_array_equal(y.download(), [0, 4, 7, 7])


def test_an_argument_set_as_it_was_is_not_set_again(device, monkeypatch):
    """The same tensor, or an equal scalar of the same type, leaves the kernel's argument alone (no
    clSetKernelArg); another value, an equal one of another type, or a view of the same memory sets it."""
    x, y = DeviceTensor.from_numpy(device, np.array([-1, 2, -3, 4], np.float32)), DeviceTensor.empty(device, (4,))
    plan = new_plan(device)
    launch = ops.activation_forward(plan, ops.activation("relu"), x, y)
    plan.finalize(plan.place())
    calls = []
    set_arg = launch._set_arg
    monkeypatch.setattr(launch, "_set_arg", lambda argument, value: (calls.append(argument.name), set_arg(argument, value)))
    launch.set("n", 4)
    launch.set("x", x)
    assert calls == []
    launch.set("n", np.int32(4))  # another type: set (as np.int32, as the first binding did)
    launch.set("n", np.int32(4))
    launch.set("x", x.view((4,)))  # another object over the same memory: set
    launch.set("n", 3)
    assert calls == ["n", "x", "n"]
    y.fill(7)
    plan.run()
    np.testing.assert_array_equal(y.download(), [0, 2, 0, 7])


def test_wrong_argument_counts_and_names_are_errors_naming_the_kernel(device):
    plan = new_plan(device)
    x = plan.value((4,), "x")
    kernel = plan.kernel("elementwise.cl", "activation_forward", ACT=1)
    with pytest.raises(TypeError, match=r"kernel activation_forward takes 3 arguments \(n, x, y\), given 2"):
        plan.launch(kernel, (4,), None, 4, x)
    with pytest.raises(TypeError, match=r"takes 3 arguments .*given 4"):
        plan.launch(kernel, (4,), None, 4, x, x, x)
    assert not plan.launches
    launch = plan.launch(kernel, (4,), None, 4, x, x)
    with pytest.raises(TypeError, match=r"kernel activation_forward has no argument 'xo'; its arguments are n, x, y"):
        launch.set("xo", 0)  # an offset is part of its tensor, not an argument of its own
    with pytest.raises(TypeError, match="has no argument 'size'"):
        plan.bind_dynamic("n_valid", launch, "size")
    plan.finalize(plan.place())
    with pytest.raises(TypeError, match="argument x is a tensor, given 3"):
        launch.set("x", 3)


def test_kernel_arguments_come_from_signatures_with_macros(device):
    """Argument names are read from the compiled kernel, so macro-built signatures (LOSS_ARGS) and
    type macros (SRC_T) name theirs too."""
    plan = new_plan(device)
    loss = plan.kernel("loss.cl", "softmax_cross_entropy", LOSS_WG=64)
    assert loss.names == ["rows", "cols", "n_valid", "flags", "scale", "z", "grad", "probs", "metrics", "labels"]
    gather = plan.kernel("data.cl", "gather_batch", SRC_UINT8=True)
    assert gather.names[-4:] == ["order", "src", "norm", "out"]
    assert [a.index for a in gather.arguments[-4:]] == [13, 15, 17, 19]
