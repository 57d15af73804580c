"""A preset trained on CIFAR-10 by clnet and by its PyTorch twin (clnet.torch_twin), side by side:
the same images, validation split, initial weights and recipe, and the accuracy each reaches, for
one seed or several (each seed draws other initial weights, shuffles and augmentations).

The recipe (issue 13's): SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.1 along a
per-step cosine to 0, batch 128, random crops of the image padded by 4 pixels with zeros and
horizontal flips, each channel normalised by the training images' mean and std. float32 in both
(PyTorch's TF32 is turned off); the JPEG decoding is not timed.

    python scripts/cifar_accuracy.py /tmp/cifar10-jpg/train --model resnet20 --epochs 30 --seeds 0 1 2 --json out.json
"""

import argparse
import json
import math
import time

import numpy as np

import clnet
from clnet.datasets.feed import channel_statistics
from clnet.torch_twin import torch_twin

LR, MOMENTUM, WEIGHT_DECAY, BATCH, CROP = 0.1, 0.9, 5e-4, 128, 4


def split(y, held_out, seed):
    """(train, validation) indices: `held_out` images of every class set aside, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    validation = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:held_out // len(classes)]
                                 for c in classes])
    return np.setdiff1d(np.arange(len(y)), validation), np.sort(validation)


def train_clnet(model, x, y, x_val, y_val, epochs, normalization, seed):
    model.compile("cross_entropy", clnet.optim.SGD(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY))
    start = time.perf_counter()
    history = model.fit(x, y, epochs=epochs, batch_size=BATCH, validation_data=(x_val, y_val), verbose=0,
                        augment=f"crop={CROP},flip", normalize=normalization,
                        schedule=clnet.callbacks.CosineLR(epochs), seed=seed)
    seconds = time.perf_counter() - start
    return {"val_accuracy": history.history["val_accuracy"], "seconds": seconds,
            "device": model.device.info.label}


def train_torch(model, initial, x, y, x_val, y_val, epochs, normalization, seed):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    twin = torch_twin(model.network)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()})
    twin.to(device)
    optimizer = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    total = epochs * steps_per_epoch
    cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in normalization)
    images, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)
    val_images = (torch.from_numpy(x_val).to(device).float() / 255 - mean) / std
    val_labels = torch.from_numpy(y_val).long().to(device)
    h, w = x.shape[2:]
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)

    def augmented(index):
        batch = torch.nn.functional.pad(images[index].float() / 255, (CROP,) * 4)  # zero fill, then normalise
        n = len(index)
        dy, dx = (torch.randint(0, 2 * CROP + 1, (n,), device=device) for _ in range(2))
        crops = batch[torch.arange(n, device=device)[:, None, None, None], torch.arange(batch.shape[1], device=device)
                      [None, :, None, None], (rows[None, :] + dy[:, None])[:, None, :, None],
                      (cols[None, :] + dx[:, None])[:, None, None, :]]
        flip = torch.rand(n, device=device) < 0.5
        crops = torch.where(flip[:, None, None, None], crops.flip(3), crops)
        return (crops - mean) / std

    accuracies = []
    start = time.perf_counter()
    for _ in range(epochs):
        twin.train()
        for index in torch.randperm(len(x), device=device).split(BATCH):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(twin(augmented(index)), labels[index]).backward()
            optimizer.step()
            cosine.step()
        twin.eval()
        with torch.no_grad():
            correct = sum((twin(part).argmax(1) == target).sum().item()
                          for part, target in zip(val_images.split(1000), val_labels.split(1000)))
        accuracies.append(correct / len(x_val))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    return {"val_accuracy": accuracies, "seconds": seconds, "device": f"PyTorch {torch.__version__} on {name}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the CIFAR-10 training images, one folder per class")
    parser.add_argument("--model", default="resnet20", choices=sorted(clnet.models.PRESETS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=5000, help="validation images, as many of every class")
    parser.add_argument("--limit", type=int, help="train on the first LIMIT images only (a quick check)")
    parser.add_argument("--frameworks", default="clnet,torch")
    parser.add_argument("--platform", help="clnet's OpenCL platform (default: the best device)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of each framework per seed")
    parser.add_argument("--json", help="write the results to this file: each seed's runs under \"seeds\", each "
                        "framework's mean final accuracy and seconds under \"mean\"")
    args = parser.parse_args()

    start = time.perf_counter()
    data = clnet.datasets.ImageFolder(args.folder)
    train, validation = split(data.y, args.held_out, seed=0)
    train = train[:args.limit] if args.limit else train
    x, y = data.x[train], data.y[train].astype(np.int32)
    x_val, y_val = data.x[validation], data.y[validation].astype(np.int32)
    normalization = channel_statistics(x)
    print(f"{len(x)} training and {len(x_val)} validation images, decoded in {time.perf_counter() - start:.1f} s",
          flush=True)

    device = clnet.device(platform=args.platform) if args.platform else clnet.device()
    results = {"model": args.model, "epochs": args.epochs, "train": len(x), "validation": len(x_val),
               "recipe": f"SGD lr {LR} momentum {MOMENTUM} weight decay {WEIGHT_DECAY}, per-step cosine, batch "
                         f"{BATCH}, crop {CROP} + flip, normalised", "seeds": {}}
    frameworks, seeds = args.frameworks.split(","), list(dict.fromkeys(args.seeds))
    for seed in seeds:
        model = clnet.models.PRESETS[args.model](device=device, seed=seed, input_shape=x.shape[1:], classes=10)
        initial = model.state_dict()
        results["seeds"][seed] = runs = {}
        for framework in frameworks:
            if framework == "torch":
                result = train_torch(model, initial, x, y, x_val, y_val, args.epochs, normalization, seed)
            else:
                model.load_state_dict(initial)
                result = train_clnet(model, x, y, x_val, y_val, args.epochs, normalization, seed)
            runs[framework] = result
            print(f"seed {seed}, {framework}: {result['val_accuracy'][-1]:.4f} validation accuracy after "
                  f"{args.epochs} epochs, {result['seconds']:.1f} s ({result['device']})", flush=True)
    results["mean"] = {}
    for framework in frameworks:
        final = [results["seeds"][seed][framework]["val_accuracy"][-1] for seed in seeds]
        seconds = [results["seeds"][seed][framework]["seconds"] for seed in seeds]
        results["mean"][framework] = {"val_accuracy": float(np.mean(final)), "seconds": float(np.mean(seconds))}
        print(f"{framework}: mean {np.mean(final):.4f} validation accuracy (from {min(final):.4f} to {max(final):.4f}) "
              f"over {len(final)} seeds, {np.mean(seconds):.1f} s a run", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
