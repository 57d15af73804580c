"""The compiler: a network, its parameters, a loss and an optimizer become one `CompiledStep` for a
device, a batch size and an input shape: a plan of pre-bound launches in phases.

    input     gather the batch from a source of raw images (converted, normalised, augmented): a
              launch of its own, or taken into the first launch of a chain of Dense layers that
              reads the input (the CPU family's mlps), which then belongs to this phase
    forward   the stages of the network
    loss      the fused loss (gradient, metrics and/or probabilities)
    backward  the stages' gradients, into the flat gradient buffer
    update    the optimizer's one launch over the flat parameters

Between backward and update lies the seam where replicas combine their gradients (replicas.py).
The compiler never sees a model object: what it needs comes as arguments.
"""

from collections import Counter
from dataclasses import dataclass
from math import prod

import numpy as np

from . import losses
from .datasets.feed import InputSpec, image_dims
from .errors import OutOfDeviceMemoryError
from .layers import Dense, Flatten, LayerContext
from .network import INPUT, loss_input
from .ops import data as data_ops
from .ops.elementwise import activation_backward, add, add_act_backward
from .ops.dense_chain import chains
from .ops.random import step_arg
from .plan import INDEX_LIMIT, Plan
from .tensor import DeviceTensor, allocate

@dataclass(frozen=True)
class Target:
    """What a step is compiled for (a model keeps one runner per Target)."""
    batch_size: int
    input_shape: tuple
    training: bool
    target_dtype: object = None  # the dtype string of the targets: "<i4" labels, "<f4" targets; None: none
    spec: InputSpec = InputSpec()


class CompiledStep:
    """One plan over a batch size and input shape, with the tensors its runner feeds: two staging
    slots of (images, targets), the identity order, the normalisation table; the loss launch (its
    flags choose gradient, probabilities and metrics), the update launch, and the output value
    (probabilities, or the raw outputs without a loss)."""

    def __init__(self, device, network, store, loss, optimizer, metrics, seed, target, allocate=True):
        self.device = device
        self.batch_size, self.input_shape = target.batch_size, tuple(target.input_shape)
        self.training = target.training
        self.spec = target.spec if self.training else target.spec.without_augmentation()
        stages = network.stages(self.input_shape, loss, fold_norms=not self.training)
        output, self.output_shape = loss_input(stages, self.input_shape)
        plan = self.plan = Plan(device)
        plan.mark("input")  # the launches that read a staging slot: the gather, or the chain that takes it in
        gather = self._input_stage(plan, seed, target.target_dtype, loss)
        runs = _runs(stages, device, self.batch_size)
        taker = _gather_taker(runs)
        if taker is None:
            self._bind_input(plan, data_ops.gather_batch(plan, gather))
            plan.mark("forward")
        contexts, values = [], {INPUT: gather.out}
        for index, run in enumerate(runs):  # a folded stage's parameters are folded just before it runs
            run_contexts = [LayerContext(plan, self._params(plan, store, stage), store.views(stage.name, "grads"),
                                         store.views(stage.name, "buffers"), stage.act, self.training,
                                         seed=seed * 1000 + stage.index) for stage in run]
            contexts += run_contexts
            if len(run) == 1:
                stage, ctx = run[0], run_contexts[0]
                values[stage.output] = stage.layer.forward(ctx, *(values[name] for name in stage.inputs))
            else:
                outputs, first = Dense.forward_chain(run_contexts, [stage.layer for stage in run],
                                                     values[run[0].inputs[0]], gather if index == taker else None)
                values.update(zip((stage.output for stage in run), outputs))
                if index == taker:
                    self._bind_input(plan, first)
                    plan.mark("forward")
        z = values[output]
        z2d = z.view((self.batch_size, prod(z.shape[1:]))) if len(z.shape) != 2 else z

        plan.mark("loss")
        self.loss_launch = self.output = self.update_launch = None
        if self.training:
            grad = plan.value(z2d.shape, "loss gradient")
            self.loss_launch = loss.record(plan, z2d, self.targets, grad, None, metrics, losses.GRAD | losses.METRICS)
            plan.mark("backward")
            self._backward(plan, runs, contexts, values, grad.view(z.shape))
            plan.mark("update")
            self.update_launch = optimizer.record(plan, store.params, store.grads,
                                                  store.require_optimizer_state(optimizer.slots))
        elif loss is not None:
            probs = plan.value(z2d.shape, "predictions")
            self.loss_launch = loss.record(plan, z2d, self.targets if self.targets is not None else probs,
                                           None, probs, metrics, losses.PROBS)
            self.output = probs
        else:
            self.output = z2d
        if allocate:  # else only planned: `plan.place()` tells the arena's size (summary)
            self._allocate(device, store)

    @staticmethod
    def _params(plan, store, stage):
        """The stage's parameters: its own, or with the BatchNorm folded into it, folded as the
        step runs (a launch before the stage's), so that they follow the parameters as they train."""
        params = store.views(stage.name, "params")
        if stage.folded is None:
            return params
        norm = stage.folded
        return norm.layer.fold(plan, params, store.views(norm.name, "params"), store.views(norm.name, "buffers"))

    @staticmethod
    def _backward(plan, runs, contexts, values, dy):
        """Record the stages' gradients in reverse. The gradient reaching a value is made only when
        a stage before it has parameters; a value read by several stages gets the sum of their
        gradients, added in the reverse order of the stages (deterministic, no atomics) as they
        come, but for the last add, which waits for the backward of the stage that made the value:
        where that stage's activation is fused, the last add also takes the sum back through the
        activation (act'(y)), and the stage's backward runs past it. A stage whose backward does not
        apply the derivative itself (Add), or that runs a residual Add (whose other input gets the
        sum's gradient), gets a single gradient through the activation from one launch. A run of
        Dense stages chained forward (`_runs`) whose values but the last have no other reader runs
        its backward as a chain too."""
        stages = [stage for run in runs for stage in run]
        trainable = {INPUT: False}
        for stage in stages:
            trainable[stage.output] = any(trainable[name] for name in stage.inputs) or bool(stage.layer.param_shapes())
        readers = Counter(name for stage in stages for name in stage.inputs)
        # per value: the sum of its earlier gradients where there are any, then its latest one
        grads = {stages[-1].output: [dy]} if stages else {}
        end = len(stages)
        for run in reversed(runs):
            run_contexts, end = contexts[end - len(run):end], end - len(run)
            if len(run) > 1 and all(readers[stage.output] == 1 for stage in run[:-1]):
                steps = [(run, run_contexts)]  # the chain's backward: one step over all its stages
            else:
                steps = [([stage], [ctx]) for stage, ctx in zip(run, run_contexts)]
            for part, ctxs in reversed(steps):
                last, first = part[-1], part[0]
                if last.output not in grads:  # nothing before it learns
                    continue
                y, dys = values[last.output], grads.pop(last.output)
                through = last.act is not None and (len(dys) > 1 or not last.layer.applies_activation_grad
                                                    or last.residual)
                dy = _gradient(plan, last.output, dys, y, last.act if through else None)
                if through:
                    ctxs = ctxs[:-1] + [ctxs[-1].past_activation()]
                need = tuple(trainable[name] for name in first.inputs)
                inputs = tuple(values[name] for name in first.inputs)
                if len(part) > 1:
                    outputs = [values[stage.output] for stage in part]
                    dxs = (Dense.backward_chain(ctxs, inputs[0], outputs, dy, need[0]),)
                elif first.layer.arity == 1:
                    dxs = (first.layer.backward(ctxs[0], inputs[0], y, dy, need[0]),)
                    if first.residual:  # the residual gets the sum's gradient, as Add hands it on
                        dxs += (dy if need[1] else None,)
                else:
                    dxs = first.layer.backward(ctxs[0], inputs, y, dy, need)
                for name, dx in zip(first.inputs, dxs):
                    if dx is None:
                        continue
                    pending = grads.setdefault(name, [])
                    if len(pending) == 2:  # read by a third stage or more: add the two before
                        pending[:] = [_gradient(plan, name, pending)]
                    pending.append(dx)

    def _input_stage(self, plan, seed, target_dtype, loss):
        """The gather (`ops.data.Gather`) that fills the input (and targets) from staging buffers or a
        dataset on the device, not yet recorded; the buffers themselves are allocated with the arena."""
        device, rows, spec = plan.device, self.batch_size, self.spec
        images = [DeviceTensor(device, (rows, *self.input_shape), dtype=np.dtype(spec.dtype)) for _ in range(2)]
        self.staging = [(slot, None) for slot in images]  # (images, targets) of the two slots
        self.identity = DeviceTensor(device, (rows,), dtype=np.int32)
        self.norm = DeviceTensor(device, (2 * image_dims(self.input_shape)[0],))
        x = plan.value((rows, *self.input_shape), "input")
        self.targets, targets = None, None
        if loss is not None and target_dtype is not None:
            shape = (rows,) if np.dtype(target_dtype) == np.int32 else (rows, prod(self.output_shape))
            self.targets = plan.value(shape, "targets", target_dtype)
            self.staging = [(slot, DeviceTensor(device, shape, dtype=np.dtype(target_dtype))) for slot in images]
            targets = (self.staging[0][1], self.targets)
        return data_ops.gather(self.identity, images[0], self.norm, x, spec.scale, spec.crop, spec.flip, seed=seed,
                               targets=targets)

    def _bind_input(self, plan, launch):
        """Let the runner point `launch`, the one that gathers the input, at each step's source."""
        bound = [("n_valid", "n_valid"), ("start", "start"), ("order", "order"), ("image_source", "src")]
        for name, argument in bound + ([("target_source", "target_src")] if self.targets is not None else []):
            plan.bind_dynamic(name, launch, argument)
        if self.spec.crop or self.spec.flip:
            plan.bind_dynamic("step", launch, "step", step_arg)
            plan.bind_dynamic("first_row", launch, "first_row", np.uint32)

    def check_fits(self, store):
        """The arena's size in elements, once the plan is found to fit the device beside `store`'s
        parameters; else an OutOfDeviceMemoryError that says which batch size would."""
        device = self.device
        arena = self.plan.place()
        staging = [t for pair in self.staging for t in pair if t is not None]
        needed = arena * 4 + sum(t.nbytes for t in staging)  # all scale with the batch size
        # parameters, gradients and up to two optimizer states are already resident
        room = min(device.info.global_mem - 4 * store.params.nbytes, device.info.max_alloc)
        room = min(room, 4 * INDEX_LIMIT)  # kernels take int offsets into the arena: no element beyond them
        if needed > room:
            fits = int(self.batch_size * room / needed * 0.9)
            advice = f"use a batch size of {fits} or less" if fits else "even one sample does not fit: use smaller inputs"
            raise OutOfDeviceMemoryError(
                f"batch size {self.batch_size} of inputs {self.input_shape} needs {needed / 2**20:.0f} MiB for "
                f"activations and batches on {device.info.name}, which has {max(room, 0) / 2**20:.0f} MiB for them: "
                f"{advice}")
        return arena

    def _allocate(self, device, store):
        """Check that the batch fits before allocating anything; say which batch size would."""
        arena = self.check_fits(store)
        staging = [t for pair in self.staging for t in pair if t is not None]
        for t in staging + [self.identity, self.norm]:
            t.buffer = allocate(device, t.nbytes, "the input batches")
        self.identity.upload(np.arange(self.batch_size, dtype=np.int32))
        self.norm.upload(self.spec.norm(image_dims(self.input_shape)[0]))
        self.plan.finalize(arena, what=f"the plan for batch size {self.batch_size}")


def _runs(stages, device, rows):
    """The stages in the runs that record their forward passes together: consecutive Dense stages,
    each reading the one before, that `ops.dense_chain.chains` takes (the CPU family), else one
    stage a run."""
    runs = []
    for stage in stages:
        if runs and isinstance(stage.layer, Dense) and isinstance(runs[-1][-1].layer, Dense) \
                and stage.inputs == (runs[-1][-1].output,):
            runs[-1].append(stage)
        else:
            runs.append([stage])
    chained = lambda run: len(run) > 1 and chains(
        device, rows, [(stage.layer.in_features, stage.layer.out_features) for stage in run])
    return [part for run in runs for part in ([run] if chained(run) else [[stage] for stage in run])]


def _gather_taker(runs):
    """The index of the run whose launch takes the input stage's gather in: a chain of Dense layers
    (`_runs`) that reads the input itself or through Flatten views, the runs before it views alone,
    so that its launch is the plan's first; None where there is none."""
    views = {INPUT}
    for index, run in enumerate(runs):
        first = run[0]
        if len(run) > 1:
            return index if first.inputs[0] in views else None
        if not (isinstance(first.layer, Flatten) and first.inputs[0] in views):
            return None
        views.add(first.output)
    return None


def _gradient(plan, name, dys, y=None, act=None):
    """The gradient of value `name` (y) from one or two of its readers' gradients `dys` (added in
    their order); with `act` (the options of the activation that made y), taken back through it
    in the same launch: (a + b) * act'(y), or dy * act'(y) for a single gradient."""
    if len(dys) == 1 and act is None:
        return dys[0]
    total = plan.value(dys[0].shape, f"{name} gradient sum" if len(dys) > 1 else f"{name} pre-activation grad")
    if len(dys) == 1:
        activation_backward(plan, act, y, dys[0], total)
    elif act is None:
        add(plan, *dys, total)
    else:
        add_act_backward(plan, act, *dys, y, total)
    return total
