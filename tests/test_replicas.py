"""Replicas (clnet/replicas.py): a model on a list of devices, here the same device listed several
times, against the same model on one device: one step, a short fit, shares, tiny batches,
prediction, files and bad input."""

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pyopencl as cl
import pytest

import clnet
from clnet import layers as L
from clnet.errors import InputError
from clnet.replicas import capacity, rank_part, shard_bounds, share_weights


def mlp(devices, shares=None):
    return clnet.Sequential([L.Flatten(), L.Dense(784, 64), L.ReLU(), L.Dense(64, 10)], device=devices, seed=4,
                            shares=shares)


def bn_net(devices, shares=None):
    """A small conv net with BatchNorm: per-replica batch statistics, combined running statistics."""
    return clnet.Sequential([L.Conv2D(1, 8, 3, stride=2), L.BatchNorm2D(8), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                             L.Dense(8 * 6 * 6, 10)], device=devices, seed=4, shares=shares)


def compiled(make, devices, shares=None):
    return make(devices, shares).compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), np.float32), rng.integers(0, 10, n)


def assert_close(single, replicated, rtol=1e-5):
    """Every tensor of state_dict within rtol of its largest magnitude."""
    for key, value in single.items():
        scale = max(float(np.abs(value).max()), 1e-6)
        assert np.abs(replicated[key] - value).max() <= rtol * scale, key


def assert_replicas_identical(model):
    """Every replica's state the same, as they run: those that a replica stepping alone left behind
    catch up first, as any use of them makes them."""
    model._lag.current([replica.store for replica in model.replicas])
    first = model.replicas[0].store.state_dict()
    for replica in model.replicas[1:]:
        for key, value in replica.store.state_dict().items():
            np.testing.assert_array_equal(value, first[key], err_msg=key)


SPLITS = pytest.mark.parametrize("replicas, shares, n", [(2, None, 32), (3, [1, 3, 0.5], 32), (3, None, 2),
                                                         (2, [0, 1], 8)],
                                 ids=["equal", "uneven", "smaller-than-replicas", "empty-share"])


@SPLITS
def test_steps_match_one_device(device, replicas, shares, n):
    """Each step's parameters, gradients and loss as on one device with the global batch: the
    shards' gradients are weighted by their sizes."""
    x, y = batch(n)
    single, replicated = compiled(mlp, device), compiled(mlp, [device] * replicas, shares)
    for _ in range(3):
        loss = single.train_on_batch(x, y)
        assert replicated.train_on_batch(x, y) == pytest.approx(loss, rel=1e-5)
        assert_close(single.gradients(), replicated.gradients())
        assert_replicas_identical(replicated)
    assert_close(single.state_dict(), replicated.state_dict())
    assert replicated.param_store.steps == single.param_store.steps == 3


@SPLITS
def test_batchnorm_running_statistics(device, replicas, shares, n):
    """Each replica normalises by its shard's statistics; the running statistics are combined by
    shard size, so the running means are the global batch's (as on one device) and every replica
    holds the same after every step."""
    x, y = batch(n)
    single, replicated = compiled(bn_net, device), compiled(bn_net, [device] * replicas, shares)
    single.train_on_batch(x, y)
    replicated.train_on_batch(x, y)
    means = [k for k in single.state_dict() if k.endswith("running_mean") or k.endswith("num_batches_tracked")]
    assert_close({k: single.state_dict()[k] for k in means}, replicated.state_dict())
    changed = replicated.state_dict()["1.running_var"] != bn_net(device).state_dict()["1.running_var"]
    assert changed.all()
    for _ in range(2):
        replicated.train_on_batch(x, y)
        assert_replicas_identical(replicated)


def test_fit_reaches_one_device_accuracy(device):
    """A short fit (a padded last batch every epoch) reaches the one-device accuracy within half a
    point, for an MLP and for a conv net with per-replica BatchNorm statistics."""
    (x, y), (xt, yt) = clnet.datasets.load_mnist_5k()
    for make in (mlp, bn_net):
        accuracy = []
        for devices in (device, [device, device]):
            model = compiled(make, devices)
            model.fit(x[:3000], y[:3000], epochs=2, batch_size=70, verbose=0)
            assert model.history.history["loss"][-1] < 0.6
            accuracy.append(model.evaluate(xt, yt, batch_size=128)["accuracy"])
        assert abs(accuracy[0] - accuracy[1]) <= 0.005, (make.__name__, accuracy)


def test_evaluate_and_predict_split_in_order(device):
    """Shards of every batch (padded last ones too) concatenated in order, metrics over all."""
    x, y = batch(13, seed=1)
    single, replicated = compiled(bn_net, device), compiled(bn_net, [device] * 3, [2, 1, 1])
    single.train_on_batch(x, y)
    replicated.load_state_dict(single.state_dict())  # into every replica
    assert_replicas_identical(replicated)
    for size in (5, 13, 2):
        np.testing.assert_allclose(replicated.predict(x, batch_size=size), single.predict(x, batch_size=size),
                                   atol=1e-5)
        one, many = single.evaluate(x, y, batch_size=size), replicated.evaluate(x, y, batch_size=size)
        assert many["loss"] == pytest.approx(one["loss"], rel=1e-5) and many["accuracy"] == one["accuracy"]


def test_save_and_load_replicated(device, tmp_path):
    x, y = batch(16)
    model = compiled(bn_net, [device, device])
    model.train_on_batch(x, y)
    model.save(tmp_path / "m.clnet")
    alone, again = clnet.load(tmp_path / "m.clnet", device=device), clnet.load(tmp_path / "m.clnet", [device] * 2)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(alone.state_dict()[key], value)
    assert_replicas_identical(again)
    np.testing.assert_allclose(again.predict(x, batch_size=5), alone.predict(x, batch_size=5), atol=1e-6)


def test_checkpointed_fit_resumes_on_replicas(device, tmp_path):
    x, y = batch(40)
    model = compiled(mlp, [device, device])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, checkpoint=tmp_path / "c.ckpt")
    loaded = clnet.load_checkpoint(tmp_path / "c.ckpt", device=[device, device])
    assert loaded.model.param_store.steps == 3 and len(loaded.model.replicas) == 2
    assert_close(model.state_dict(), loaded.model.state_dict(), rtol=0)


class InterruptAt(clnet.callbacks.Callback):
    """Ctrl-C after one step of the second epoch."""

    def on_step_end(self, epoch, step):
        if (epoch, step) == (2, 1):
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_fit_resumes_on_replicas(device, tmp_path):
    """Interrupted mid-epoch and resumed, a replicated fit ends as one never interrupted: weights
    and history (whose training metrics span the checkpoint, summed over the replicas)."""
    x, y = batch(60)
    runs = []
    for interrupt in (False, True):
        model = compiled(bn_net, [device, device], [2, 1])
        options = dict(epochs=3, batch_size=16, verbose=0, augment="flip", checkpoint=tmp_path / f"{interrupt}.ckpt",
                       resume=True)
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                model.fit(x, y, callbacks=[InterruptAt()], **options)
            model = compiled(bn_net, [device, device], [2, 1])
        model.fit(x, y, **options)
        runs.append((model.state_dict(), model.history.history))
    assert runs[1][1] == runs[0][1]
    assert_close(runs[0][0], runs[1][0], rtol=0)


def test_shards_and_capacity():
    weights = share_weights([1, 3, 0.5], 3)
    assert list(shard_bounds(32, share_weights(None, 2))) == [0, 16, 32]
    rows = capacity(64, weights)
    for n in range(1, 65):
        bounds = shard_bounds(n, weights)
        assert bounds[0] == 0 and bounds[-1] == n and np.all(np.diff(bounds) >= 0)
        assert np.all(np.diff(bounds) <= rows)
    sizes, worlds = np.arange(1, 65), [SimpleNamespace(rank=rank, size=3) for rank in range(3)]
    parts = [rank_part(sizes, world) for world in worlds]  # the ranks' parts tile every batch, in rank order
    assert np.all(parts[0][0] == 0) and np.all(parts[2][1] == sizes)
    assert np.all(parts[0][1] == parts[1][0]) and np.all(parts[1][1] == parts[2][0])
    assert [tuple(rank_part(7, world)) for world in worlds] == [tuple(int(v[6]) for v in p) for p in parts]


def test_a_part_of_the_wrong_size_is_refused(device):
    """A step fed this rank's part of a global batch checks the part's rows against the split."""
    model = compiled(mlp, [device, device])
    x, targets = model._prepare(*batch(8))
    runner = model._runner(8, x.shape[1:], True, targets.dtype, model._spec(x))
    with pytest.raises(InputError, match="part of a batch of 8 is 8 rows, not 7: feed it rows rank_part"):
        runner.train(x[:7], targets[:7], batch=8)


@pytest.mark.parametrize("device_arg, shares, message", [
    ([], None, "non-empty list"), (["cpu"], None, "clnet.Device"), ("pocl", None, "clnet.Device"),
    (2, [1, 2, 3], "2 non-negative numbers"), (2, [1, -1], "non-negative"), (2, [0, 0], "not all zero")])
def test_bad_devices_and_shares(device, device_arg, shares, message):
    devices = [device] * device_arg if isinstance(device_arg, int) else device_arg
    with pytest.raises(InputError, match=message) as error:
        clnet.models.mlp(device=devices) if shares is None else mlp(devices, shares)
    assert "\n" not in str(error.value)


def test_resident_needs_one_device(device):
    x, y = batch(8)
    with pytest.raises(InputError, match="resident=True needs a model on one device"):
        compiled(mlp, [device, device]).fit(x, y, verbose=0, resident=True)


def test_dropout_and_augmentation_draw_the_whole_batch_masks(device):
    """A replica's shard draws the random crops, flips and dropout masks of the same samples of the
    whole batch (keyed by global row and element, also where a shard's elements are not aligned to
    the generator's groups of four), so a step equals one device's."""
    def net(devices, shares=None):
        return clnet.Sequential([L.Conv2D(1, 3, 3), L.Dropout(0.3), L.ReLU(), L.Flatten(), L.Dense(3 * 26 * 26, 13),
                                 L.Dropout(0.5), L.Dense(13, 10)], device=devices, seed=4, shares=shares)
    x, y = batch(7)  # shards of 2, 3 and 2 rows: the second Dropout's shards start at elements 26 and 65
    single, replicated = compiled(net, device), compiled(net, [device] * 3)
    for model in (single, replicated):
        model.fit(x, y, epochs=2, batch_size=7, shuffle=False, augment="crop=2,flip", verbose=0)
    assert replicated.history.history["loss"] == pytest.approx(single.history.history["loss"], rel=1e-5)
    assert_close(single.state_dict(), replicated.state_dict())


def slowed(monkeypatch, model, seconds_per_row, seconds_per_step=(0, 0)):
    """The test hook of slow devices: each replica's device starts its shard late, by
    seconds_per_row[i] per row and seconds_per_step[i], as a slower device would finish it late:
    its queue waits for a user event that a timer completes, so the host goes on queuing."""
    train = clnet.runner.Runner.train
    stores = [replica.store for replica in model.replicas]

    def slow_train(runner, x, targets, update=True):
        if runner.store in stores and len(x):
            i = stores.index(runner.store)
            start = cl.UserEvent(runner.device.context)
            cl.enqueue_marker(runner.device.queue, wait_for=[start])
            threading.Timer(seconds_per_row[i] * len(x) + seconds_per_step[i],
                            start.set_status, [cl.command_execution_status.COMPLETE]).start()
        return train(runner, x, targets, update)
    monkeypatch.setattr(clnet.runner.Runner, "train", slow_train)


class EpochClock(clnet.callbacks.Callback):
    """The seconds of each epoch's steps, compilation left out."""

    def on_epoch_begin(self, epoch):
        self.start = time.perf_counter()

    def on_epoch_metrics(self, epoch, logs):
        self.seconds = time.perf_counter() - self.start


@pytest.mark.parametrize("per_row, per_step", [((0.0004, 0.0012), (0, 0)), ((0, 0), (0, 0.03))],
                         ids=["slower-per-row", "fixed-cost"])
def test_auto_shares_follow_the_faster_device(device, monkeypatch, caplog, per_row, per_step):
    """shares="auto": a replica three times slower per row gets a quarter of each batch, so the
    step time follows the faster one; one slowed by a fixed cost larger than the other's whole step
    gets nothing, and the run says so. Either way the weights are one device's."""
    (x, y), _ = clnet.datasets.load_mnist_5k()
    x, y = x[:1280], y[:1280]
    fit = dict(epochs=2, batch_size=64, shuffle=False, verbose=0)
    seconds = []
    for shares in ([1, 1], "auto"):
        model, clock = compiled(mlp, [device, device], shares), EpochClock()
        slowed(monkeypatch, model, per_row, per_step)
        model.fit(x, y, callbacks=[clock], **fit)
        seconds.append(clock.seconds)  # of the second epoch, balanced
    single = compiled(mlp, device)
    single.fit(x, y, **fit)
    assert_close(single.state_dict(), model.state_dict(), rtol=1e-4)
    assert seconds[1] < 0.75 * seconds[0], (seconds, model.shares)
    if per_step[1]:
        assert list(model.shares) == [1, 0] and model.balancer.dropped == {1}
        assert "gets no rows from now on" in caplog.text
    else:
        assert 0.12 < model.shares[1] < 0.38 and not model.balancer.dropped, model.shares


def test_a_hopeless_replica_is_left_out_at_the_first_measured_step(device, monkeypatch, caplog):
    """shares="auto": a replica slowed by a fixed cost far beyond HOPELESS times the other's whole
    step gets nothing from step 2, the first measured one, not after SETTLED; the steps after it
    no longer wait for it."""
    model = compiled(mlp, [device, device], "auto")
    slowed(monkeypatch, model, (0, 0), (0, 0.6))
    x, y = batch(64)
    model.train_on_batch(x, y)  # the warm-up, not measured
    assert list(model.shares) == [0.5, 0.5] and not model.balancer.dropped
    model.train_on_batch(x, y)
    assert model.balancer.steps == 2 and list(model.shares) == [1, 0] and model.balancer.dropped == {1}
    began = time.perf_counter()
    for _ in range(5):
        model.train_on_batch(x, y)
    assert time.perf_counter() - began < 0.6
    assert caplog.text.count("gets no rows from now on") == 1


def balanced(weights, seconds, steps, batch_size=1024):
    """A Balancer fed synthetic timings, seconds(rows) each replica's time for its rows; it and the
    shares after each step."""
    from clnet import balance
    balancer, shares = balance.Balancer(np.array(weights, np.float64), ["fast", "slow"]), []
    for _ in range(steps):
        if balancer.due():
            rows = np.diff(shard_bounds(batch_size, balancer.weights))
            balancer.record(rows, np.where(rows > 0, seconds(rows), 0.0))
        shares.append(balancer.weights.copy())
    return balancer, shares


def test_balancer_leaves_a_hopeless_device_out_at_once_and_measures_a_close_one_twice(caplog):
    """An H100 beside a 16-core CPU (cifar-cnn at batch 1024: 12 ms for the GPU's 964 rows, 0.4 s
    for the CPU's 60 whatever their number): the CPU is left out at step 2, the first measured, and
    stays out through the rechecks. A CPU whose fixed cost is just under HOPELESS times the GPU's
    whole step is measured in both rounds and left out at SETTLED, as before; one three times
    slower per row keeps its share after both rounds."""
    from clnet import balance
    gpu_cpu = [16 / 17, 1 / 17]
    gpu_step = 0.012 * 1024 / 964  # the GPU's whole batch
    balancer, shares = balanced(gpu_cpu, lambda rows: np.array([0.012 * rows[0] / 964, 0.4]), 2 * balance.RECHECK)
    assert shares[0] == pytest.approx(gpu_cpu) and all(list(w) == [1, 0] for w in shares[1:])
    assert balancer.dropped == {1} and caplog.text.count("gets no rows from now on") == 1
    close = 0.9 * balance.HOPELESS * gpu_step
    balancer, shares = balanced(gpu_cpu, lambda rows: np.array([0.012 * rows[0] / 964, close]), balance.SETTLED)
    assert shares[1] == pytest.approx(gpu_cpu)  # step 2 leaves it in
    assert shares[balance.SETTLED - 2][1] > 0 and list(shares[-1]) == [1, 0] and balancer.dropped == {1}
    balancer, shares = balanced([0.5, 0.5], lambda rows: rows * np.array([0.001, 0.003]), balance.SETTLED)
    assert list(shares[1]) == [0.5, 0.5]
    assert shares[-1] == pytest.approx([0.75, 0.25]) and not balancer.dropped


def test_a_step_does_not_wait_for_a_replica_without_rows(device):
    """A replica without rows (a zero share) beside two with rows still gets every update, but the
    step does not wait for its queue: the BatchNorm statistics and the gradients are queued to it,
    not waited for. Here its queue is held for 3 s, and a step takes less."""
    other = clnet.device(device.info.platform_index, device.info.device_index)  # its own queue
    model = compiled(bn_net, [device, device, other], [1, 1, 0])
    x, targets = model._prepare(*batch(16))
    runner = model._runner(len(x), x.shape[1:], True, targets.dtype, model._spec(x))
    runner.train(x, targets)
    runner.sync()
    held = cl.UserEvent(other.context)
    cl.enqueue_marker(other.queue, wait_for=[held])
    other.queue.flush()
    threading.Timer(3.0, held.set_status, [cl.command_execution_status.COMPLETE]).start()
    began = time.perf_counter()
    runner.train(x, targets)
    took = time.perf_counter() - began
    runner.sync()
    assert took < 1.5, took
    assert_replicas_identical(model)


def test_a_replica_with_every_row_steps_alone(device, monkeypatch):
    """Where one replica has every row (the others left out, as "auto" leaves out a slow device), it
    steps alone: no gradients through the host, the others left behind. They catch up before
    anything uses them: evaluation that gives them rows, a step that does, the model's state read
    from the first replica. Weights, gradients, BatchNorm statistics, Adam's moments and step count
    (its bias corrections), losses and evaluations: the same bit for bit as every replica in
    lockstep."""
    x, y = batch(24)
    combined = []
    monkeypatch.setattr(clnet.reduction.BucketedSum, "combine",
                        lambda summed, weights, combine=clnet.reduction.BucketedSum.combine:
                        combined.append(1) or combine(summed, weights))
    runs = []
    for alone in (True, False):
        if not alone:
            monkeypatch.setattr(clnet.replicas.ReplicatedRunner, "_alone", lambda runner, sizes: False)
        model = bn_net([device] * 2, "auto").compile("cross_entropy", clnet.optim.Adam(lr=0.01))
        model.balancer.due = lambda: False  # the shares are set here, not measured
        combined.clear()
        results = []

        def steps(shares, count):
            model.shares[:] = shares
            results.extend(model.train_on_batch(x, y) for _ in range(count))
        steps([0, 1], 3)  # the first replica is left behind
        assert [r.store.steps for r in model.replicas] == ([0, 3] if alone else [3, 3])
        assert len(combined) == (0 if alone else 3)
        model.shares[:] = [0.5, 0.5]
        results.append(model.evaluate(x, y, batch_size=10))
        steps([0, 1], 2)
        reads = [(model.state_dict(), model.optimizer_state_dict(), model.gradients())]  # of the first, behind
        steps([0.5, 0.5], 1)  # rows for both again
        steps([1, 0], 2)  # now the second is left behind, and the first is read
        reads.append((model.state_dict(), model.optimizer_state_dict(), model.gradients()))
        assert model.replicas[1].store.steps == (6 if alone else 8)
        model.shares[:] = [0.5, 0.5]
        results.append(model.predict(x, batch_size=10))
        assert_replicas_identical(model)
        runs.append((reads, results))
    (reads, results), (lockstep_reads, lockstep_results) = runs
    for (state, optimizer, gradients), expected, steps_taken in zip(reads, lockstep_reads, (5, 8)):
        for mine, theirs in ((state, expected[0]), (gradients, expected[2])):
            for key, value in theirs.items():
                np.testing.assert_array_equal(mine[key], value, err_msg=key)
        assert optimizer["steps"] == expected[1]["steps"] == steps_taken
        for mine, theirs in zip(optimizer["state"], expected[1]["state"]):
            np.testing.assert_array_equal(mine, theirs)
    assert results[:-1] == lockstep_results[:-1]
    np.testing.assert_array_equal(results[-1], lockstep_results[-1])


def test_auto_is_the_default_for_different_devices(device):
    assert compiled(mlp, [device, device]).balancer is None
    assert compiled(mlp, [device, device], "auto").balancer is not None
    with pytest.raises(InputError, match='"auto" or 2 non-negative numbers'):
        mlp([device, device], "fast")


def test_bucketed_sum_in_the_order_backward_writes(device, monkeypatch):
    """Gradients read in small buckets, each after the last backward launch that touches it (the
    last layer's first), sum to the same weights bit for bit as in one bucket, and to one device's;
    the seam's times add up."""
    monkeypatch.setenv("CLNET_DENSE_CHAIN", "0")  # a launch a layer's gradients (a chain writes them at once)
    bucket = clnet.reduction.BUCKET
    monkeypatch.setattr(clnet.reduction, "BUCKET", 300)
    x, y = batch(32)
    single, small = compiled(mlp, device), compiled(mlp, [device] * 2, [3, 1])
    times = small.time_seam()
    for _ in range(3):
        single.train_on_batch(x, y)
        small.train_on_batch(x, y)
    monkeypatch.setattr(clnet.reduction, "BUCKET", bucket)
    whole = compiled(mlp, [device] * 2, [3, 1])
    for _ in range(3):
        whole.train_on_batch(x, y)
    runner = next(iter(small._runners.values()))
    found = runner._summed.buckets[0]
    assert len(found) == -(-small.param_store.grads.size // 300) and len(runner._summed.buckets[1]) == len(found)
    assert found[0][1] == small.param_store.grads.size  # the buffer's end: the last layer, written first
    assert [b[2] for b in found] == sorted(b[2] for b in found) and found[0][2] < found[-1][2]
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(small.state_dict()[key], value, err_msg=key)
    assert_close(single.state_dict(), small.state_dict())
    seam = times.per_step()
    assert seam["steps"] == 3 and seam["compute"] > 0 and 0 <= seam["hidden"] <= seam["reduction"] > 0


def test_clnet_devices_shows_the_selection_and_its_shares(device):
    """clnet-devices with --device lists the replicas a run would use and how it splits batches."""
    from click.testing import CliRunner
    from clnet.cli import devices
    index = str(device.info.index)
    result = CliRunner().invoke(devices, ["--device", f"{index},{index}"])
    assert result.exit_code == 0, result.output
    assert f"Selected: 2 replicas, shares equal (50% each)\n    [{index}] {device.info.label}" in result.output
    listed = json.loads(CliRunner().invoke(devices, ["--device", index, "--json"]).output)
    assert listed["selected"] == [device.info.index] and listed["shares"] == "100%"
    plain = CliRunner().invoke(devices, [])
    assert "Default: [" in plain.output and "Under mpirun, the ranks of a machine take in turn: [" in plain.output


def test_balancer_moves_shares_on_drift_only():
    """Synthetic timings: two rounds set the shares by throughput; a later measured step moves them
    only when the devices' times drift apart by more than DRIFT, and the step after may leave a
    device out."""
    from clnet import balance
    balancer = balance.Balancer(np.full(2, 0.5), ["fast", "slow"])
    while balancer.rounds < 2:  # one device needs 1 ms a row, the other 3 ms
        if balancer.due():
            rows = np.diff(shard_bounds(64, balancer.weights))
            balancer.record(rows, rows * np.array([0.001, 0.003]))
    assert balancer.weights == pytest.approx([0.75, 0.25]) and not balancer.dropped
    while not balancer.due():  # the next measured step: as balanced as rounding leaves it
        pass
    balancer.record([48, 16], [0.048, 0.048 * (1 + balance.DRIFT / 2)])
    assert balancer.weights == pytest.approx([0.75, 0.25])
    while not balancer.due():  # the slow device has become slower: the shares move, no one is left out
        pass
    balancer.record([48, 16], [0.048, 0.096])
    assert balancer.weights == pytest.approx([6 / 7, 1 / 7]) and not balancer.dropped
    assert balancer.due()  # the step after, at the new shares: a fixed cost shows now
    balancer.record([55, 9], [0.055, 0.080])
    assert list(balancer.weights) == [1, 0] and balancer.dropped == {1}


def test_first_guess_gives_a_cpu_beside_a_gpu_a_sixteenth():
    from clnet.balance import first_guess

    class Fake:
        def __init__(self, kind):
            self.info = type("Info", (), {"type": kind})()
    assert first_guess([Fake("GPU"), Fake("CPU")]) == pytest.approx([16 / 17, 1 / 17])
    assert first_guess([Fake("CPU"), Fake("CPU")]) == pytest.approx([0.5, 0.5])
