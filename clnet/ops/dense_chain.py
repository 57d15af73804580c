"""Consecutive Dense layers in few launches on the CPU family (kernels_cl/dense_chain.cl): the
forward pass of up to CHAIN_LAYERS layers in one launch, their backward pass in two. Under PoCL a
launch costs tens of microseconds on a many-core CPU (an empty kernel enqueued back to back: 36-41
us on a 16-core Xeon), about what an mlp's products at batch 128 take there. `chains` says which
layers the compiler records so; every value they make is stored as the layers' own launches store
it, so the rest of a plan reads them as it would."""

import os

from .elementwise import activation
from .gemm import PANEL, direct

FILE = "dense_chain.cl"
CHAIN_LAYERS = 4  # layers a launch at most (the kernels take each one's tensors as arguments)
BLOCK = 4         # the forward pass's blocks: 4 rows by 4 outputs
ROWS = 8          # the backward kernels' register blocks (CPU_ROWS): rows by 16 columns
WEIGHT_LOCAL = 8  # dense_chain_weights' work-items a work-group
CHAIN_UNITS = 8   # compute units from which chains pay: PoCL's launch costs grow with its threads
                  # (an empty kernel enqueued back to back: 36-41 us on a 16-core Xeon, 2.3 us on a
                  # 2-core EPYC, whose chained products ran 3-16% slower than its tuned gemm_direct's)


def chains(device, rows, shapes):
    """Whether consecutive Dense layers of (in, out) `shapes`, each reading the one before, at a
    batch of `rows`, run as chains: on the CPU family, where each product is one gemm_direct would
    take (`ops.gemm.direct`: small enough that a launch's cost weighs), on a device of CHAIN_UNITS
    compute units or more; CLNET_DENSE_CHAIN=1 on any CPU-family device, =0 never."""
    mode = os.environ.get("CLNET_DENSE_CHAIN")
    if mode not in (None, "", "0", "1"):
        raise ValueError(f"CLNET_DENSE_CHAIN must be 0 or 1, not {mode!r}")
    wanted = mode == "1" or (not mode and device.info.compute_units >= CHAIN_UNITS)
    return (wanted and device.family == "cpu" and len(shapes) > 1
            and all(direct(rows, n, k) for k, n in shapes))


def _parts(layers):
    """`layers` in launches of CHAIN_LAYERS at most, the last of at least two (a chain of 5 is 3 + 2)."""
    count = -(-len(layers) // CHAIN_LAYERS)
    size = -(-len(layers) // count)
    return [layers[start:start + size] for start in range(0, len(layers), size)]


def _program(plan, part, kernel, **gathering):
    """`kernel` of the chain program of `part`'s layers ((weight, bias or None, act, ...) each): one
    program for the three kernels where the activations are the same; `gathering`, the options of a
    forward launch that takes the input stage's gather in, makes a program of its own."""
    options = {"CHAIN_LAYERS": len(part), "CPU_ROWS": ROWS, **gathering}
    for i, (weight, bias, act, *_) in enumerate(part):
        act = act or activation()
        options.update({f"CHAIN_K{i}": weight.shape[1], f"CHAIN_N{i}": weight.shape[0],
                        f"CHAIN_BIAS{i}": int(bias is not None), f"CHAIN_ACT{i}": act["ACT"],
                        f"CHAIN_SLOPE{i}": act.get("ACT_SLOPE", "0.0f")})
    return plan.kernel(FILE, kernel, **options)


def _row_items(plan, rows, block):
    """(rows a work-item, work-items) of a launch by rows: blocks of `block` rows, as many a
    work-item as leave every compute unit one."""
    blocks = -(-rows // block)
    per_item = -(-blocks // plan.device.info.compute_units)
    return per_item * block, -(-blocks // per_item)


def forward(plan, x, layers, gather=None):
    """Record the forward pass of Dense layers that each read the one before, the first x (M, K):
    `layers` holds each one's (weight (N, K), bias (N,) or None, act, output (M, N)). A work-item
    takes blocks of BLOCK rows through every layer of a launch. With `gather` (an `ops.data.Gather`
    of x, the plan's input) the first launch fills x first, each work-item its own rows; returns
    the first launch."""
    launches = []
    for part in _parts(layers):
        per_item, items = _row_items(plan, x.shape[0], BLOCK)
        gathering = {"CHAIN_GATHER": True, **gather.defines} if gather and not launches else {}
        tail = (*gather.args, *gather.target_args) if gathering else ()
        launches.append(plan.launch(
            _program(plan, part, "dense_chain", **gathering), (items,), (1,), x.shape[0], per_item, x,
            *[t for weight, bias, act, y in part for t in (weight, bias if bias is not None else y, y)], *tail))
        x = part[-1][3]
    return launches[0]


def backward(plan, x, layers, dy, need_dx):
    """Record the backward pass of `forward`'s layers, given the gradient dy of the last one's
    output: `layers` holds each one's (weight, bias or None, act, output, weight gradient, bias
    gradient or None), `act` None where the compiler applied the activation's derivative already.
    Per launch of layers, one launch by rows (the gradients before each activation, and of each
    input) and one by blocks of the parameters' gradients. The gradient of x where `need_dx`, else
    None."""
    parts = _parts(layers)
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        first_input = x if index == 0 else parts[index - 1][-1][3]
        rows = first_input.shape[0]
        need = need_dx or index > 0
        grads = [plan.value((rows, weight.shape[1]), "chain input grad") for weight, *_ in part]
        if not need:
            grads[0] = dy  # not written: any tensor
        # each layer's pre-activation gradient: the gradient of its output itself without an activation
        outputs_grads = grads[1:] + [dy]
        pres = [plan.value(grad.shape, "chain pre-activation grad") if act and act != activation() else grad
                for (weight, bias, act, y, *_), grad in zip(part, outputs_grads)]
        per_item, items = _row_items(plan, rows, ROWS)
        plan.launch(_program(plan, part, "dense_chain_back"), (items,), (1,), rows, per_item, int(need), dy,
                    *[t for (weight, bias, act, y, *_), pre, grad in zip(part, pres, grads)
                      for t in (weight, y, pre, grad)])
        blocks = sum(-(-weight.shape[0] // ROWS) * -(-weight.shape[1] // PANEL)
                     + (-(-weight.shape[0] // PANEL) if bias is not None else 0) for weight, bias, *_ in part)
        plan.launch(_program(plan, part, "dense_chain_weights"), (blocks,), (WEIGHT_LOCAL,), rows, first_input,
                    *[t for (weight, bias, act, y, dweight, dbias), pre in zip(part, pres)
                      for t in (y, pre, dweight, dbias if dbias is not None else dweight)])
        dy = grads[0]
    return dy if need_dx else None
