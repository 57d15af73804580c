"""A small training script that tests/test_mpi.py runs under `mpiexec -n 2` (and whose pieces it
runs in one process to compare): python3 mpi_fit.py MODE DEVICE_INDEX OUT_FOLDER.

MODE "step": three train_on_batch steps (rank 0 saves the weights to step.npz), then the fit;
"fit": the fit alone; "kill", "hang", "fail", "interrupt": the fit, with rank 1 killed (SIGKILL),
stuck or raising, or rank 0 sent Ctrl-C (SIGINT), at the fourth step of the second epoch; "resume": the fit resumed from its checkpoint;
"dropout": a conv net with Dropout and augmentation fitted on two replicas per rank (rank 0 saves
the weights to dropout.npz), and nothing else; "stream": the streamed image folder OUT_FOLDER/images
fitted for an epoch, evaluated and predicted (rank 0 saves stream.npz), each rank's workers writing
the files they decode to decoded-<phase>-<rank>.txt, and nothing else.
The fit checkpoints to run.ckpt, every rank asks to save saved-<rank>.clnet, and rank 0 writes the
test metrics to result.json and the predictions of 50 test images to predictions.npy."""

import json
import os
import signal
import sys
import time

import numpy as np

import clnet
from clnet import layers as L

FIT = dict(epochs=2, batch_size=64, verbose=0)


def mlp(device):
    return clnet.Sequential([L.Flatten(), L.Dense(784, 64), L.ReLU(), L.Dense(64, 10)], device=device,
                            seed=4).compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))


def dropout_net(device):
    return clnet.Sequential([L.Conv2D(1, 3, 3), L.Dropout(0.3), L.ReLU(), L.Flatten(), L.Dense(3 * 26 * 26, 10)],
                            device=device, seed=4).compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))


def fit_dropout(device):
    """The dropout net fitted on x[:150], whose steps draw masks, crops and flips by global row."""
    x, y, _, _ = data()
    model = dropout_net(device)
    model.fit(x[:150], y[:150], epochs=2, batch_size=50, shuffle=False, augment="crop=2,flip", verbose=0)
    return model


def write_images(folder, count=21):
    """`count` small JPEGs and PNGs of random sizes, in three class folders."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(count):
        os.makedirs(os.path.join(folder, "abc"[i % 3]), exist_ok=True)
        h, w = rng.integers(14, 30, 2)
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image.save(os.path.join(folder, "abc"[i % 3], f"{i:02d}.{'png' if i % 2 else 'jpg'}"))


def fit_stream(device, folder, out):
    """The streamed folder fitted for one epoch of 21 samples in global batches of 6 (the last of 3:
    2 rows on rank 0, 1 on rank 1), then evaluated and predicted in batches of 4 (the last of 1: no
    row on rank 1); returns (model, {"loss": ..., "accuracy": ...}, predictions). The decoding
    workers, forked from this process, append each file they decode to out/decoded-<phase>-<rank>.txt."""
    from clnet.datasets import workers
    decode, rank = workers.decode_into, clnet.distributed.world().rank
    phase = ["fit"]

    def counted(Image, path, *args):
        with open(os.path.join(out, f"decoded-{phase[0]}-{rank}.txt"), "a") as log:
            log.write(path + "\n")
        return decode(Image, path, *args)

    stream = clnet.datasets.ImageFolder(folder, image_size=12, stream=True, augment="random-resized-crop,flip",
                                        workers=2)
    model = clnet.Sequential([L.Flatten(), L.Dense(3 * 12 * 12, 16), L.ReLU(), L.Dense(16, 3)], device=device,
                             seed=4).compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))
    workers.decode_into = counted
    try:
        model.fit(stream, epochs=1, batch_size=6, verbose=0)  # which closes the stream: its workers end
        phase[0] = "evaluate"
        result = model.evaluate(stream, batch_size=4)
        stream.close()  # the next workers are forked anew, logging to the next phase's file
        phase[0] = "predict"
        predictions = model.predict(stream, batch_size=4)
    finally:
        workers.decode_into = decode
        stream.close()
    return model, result, predictions


def data():
    (x, y), (xt, yt) = clnet.datasets.load_mnist_5k()
    return x[:2000], y[:2000], xt, yt


class Trouble(clnet.callbacks.Callback):
    """Rank 1 is killed, hangs or fails, or rank 0 gets Ctrl-C, at step 3 of epoch 2."""

    def __init__(self, mode):
        self.mode = mode

    def on_step_end(self, epoch, step):
        if (epoch, step) != (2, 3):
            return
        if self.mode == "interrupt" and self.model.world.rank == 0:
            os.kill(os.getpid(), signal.SIGINT)
        if self.model.world.rank != 1:
            return
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.mode == "hang":
            time.sleep(600)
        elif self.mode == "fail":
            raise RuntimeError("rank 1 fails on purpose")


def main(mode, index, out):
    world = clnet.distributed.init()
    device = clnet.device(device=index)
    if mode == "stream":
        model, result, predictions = fit_stream(device, os.path.join(out, "images"), out)
        if world.lead:
            np.savez(os.path.join(out, "stream.npz"), predictions=predictions, **model.state_dict(),
                     **{f"evaluate.{k}": v for k, v in result.items()})
        return
    if mode == "dropout":
        model = fit_dropout([device, device])
        if world.lead:
            np.savez(os.path.join(out, "dropout.npz"), **model.state_dict())
        return
    x, y, xt, yt = data()
    model = mlp(device)
    if mode == "step":
        for _ in range(3):
            model.train_on_batch(x[:32], y[:32])
        if world.lead:
            np.savez(os.path.join(out, "step.npz"), **model.state_dict())
        model = mlp(device)
    model.fit(x, y, checkpoint=os.path.join(out, "run.ckpt"), resume=mode == "resume", callbacks=[Trouble(mode)],
              **FIT)
    model.save(os.path.join(out, f"saved-{world.rank}.clnet"))
    result, predictions = model.evaluate(xt, yt), model.predict(xt[:50], batch_size=16)
    if world.lead:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f)
        np.save(os.path.join(out, "predictions.npy"), predictions)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
