"""clnet among other pyopencl code: a Device that wraps an existing context or queue (no second
context), and pyopencl arrays fed to predict and evaluate where they lie (no copy through the host)."""

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest

import clnet
from clnet import layers as L
from clnet.errors import InputError


def small_model(device, seed=0):
    model = clnet.Sequential([L.Conv2D(3, 4, 3), L.ReLU(), L.Flatten(), L.Dense(4 * 6 * 6, 5)],
                             device=device, seed=seed)
    model.compile("cross_entropy", "sgd")
    return model


def images(n=37, dtype=np.float32, seed=0):
    x = np.random.default_rng(seed).random((n, 3, 8, 8), dtype=np.float32)
    return (x * 255).astype(np.uint8) if dtype == np.uint8 else x


def raises_on_use(*args, **kwargs):
    raise AssertionError("clnet made a context of its own")


def test_an_existing_queue_or_context_is_wrapped(device, monkeypatch):
    context = cl.Context([device.cl_device])
    queue = cl.CommandQueue(context)
    monkeypatch.setattr(cl, "Context", raises_on_use)
    wrapped = clnet.device(queue=queue)
    assert wrapped.queue is queue and wrapped.context == context and wrapped.copy_queue.context == context
    assert wrapped.info == device.info
    in_context = clnet.device(context=context)
    assert in_context.context is context and in_context.queue.context == context and in_context.info == device.info
    x = images()
    expected = small_model(device).predict(x)
    for dev in (wrapped, in_context):  # kernels build and run in the given context
        np.testing.assert_array_equal(small_model(dev).predict(x), expected)


def test_wrapping_refuses_what_cannot_work(device):
    context = cl.Context([device.cl_device])
    queue = cl.CommandQueue(context)
    with pytest.raises(InputError, match="platform= or a context=/queue=, not both"):
        clnet.device(platform="0", queue=queue)
    with pytest.raises(InputError, match="queue= belongs to another context"):
        clnet.device(context=cl.Context([device.cl_device]), queue=queue)
    try:
        unordered = cl.CommandQueue(context, properties=cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE)
    except cl.Error:
        return  # a driver without out-of-order queues
    with pytest.raises(InputError, match="out-of-order queue"):
        clnet.device(queue=unordered)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_predict_and_evaluate_read_pyopencl_arrays_where_they_lie(device, dtype, monkeypatch):
    model = small_model(device)
    x, y = images(dtype=dtype), np.arange(37) % 5
    expected, metrics = model.predict(x, batch_size=8), model.evaluate(x, y, batch_size=8)
    on_device = cl_array.to_device(device.queue, x)
    shifted = cl_array.to_device(device.queue, np.concatenate([x[:3], x]))[3:]  # an array at an offset

    def no_upload(*args, **kwargs):
        raise AssertionError("images went through the host")
    upload = clnet.tensor.DeviceTensor.upload
    monkeypatch.setattr(clnet.tensor.DeviceTensor, "upload", no_upload)
    for array in (on_device, shifted):
        np.testing.assert_array_equal(model.predict(array, batch_size=8), expected)
    monkeypatch.setattr(clnet.tensor.DeviceTensor, "upload", upload)  # evaluate uploads its labels
    assert model.evaluate(on_device, y, batch_size=8) == metrics


def test_replicas_on_one_context_split_a_pyopencl_array(device):
    single, replicated = small_model(device), small_model([device, device])
    x = images(11)
    np.testing.assert_array_equal(replicated.predict(cl_array.to_device(device.queue, x), batch_size=4),
                                  single.predict(x, batch_size=4))


def test_pyopencl_arrays_that_cannot_be_read_are_refused(device):
    model = small_model(device)
    x = images(4)
    elsewhere = cl.CommandQueue(cl.Context([device.cl_device]))
    cases = [(cl_array.to_device(elsewhere, x), "another OpenCL context"),
             (cl_array.to_device(device.queue, x.astype(np.float64)), "of float64: give float32 or uint8"),
             (cl_array.to_device(device.queue, x[:, 0, 0, 0].copy()), "batch dimension first"),
             (cl_array.to_device(device.queue, x).transpose((0, 1, 3, 2)), "not C-contiguous")]
    for array, message in cases:
        with pytest.raises(InputError, match=message):
            model.predict(array)
    with pytest.raises(InputError, match="training takes host arrays"):
        model.fit(cl_array.to_device(device.queue, x), np.zeros(4, np.int64), verbose=0)


def test_work_on_the_arrays_own_queue_is_done_before_it_is_read(device):
    model = small_model(device)
    x = images(16)
    other_queue = cl.CommandQueue(device.context)
    array = cl_array.zeros(other_queue, x.shape, np.float32)
    array.set(x, queue=other_queue, async_=True)  # still in flight on another queue of the context
    array += 0.0
    np.testing.assert_array_equal(model.predict(array), model.predict(x))
