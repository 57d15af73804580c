"""The PyTorch twin of a clnet network: the same graph built from torch.nn modules named as the
network's nodes, so that state_dicts move between the two unchanged and the same recipe can run in
both (scripts/cifar_accuracy.py trains a preset side by side with its twin). torch is imported
when a twin is made, never by clnet itself."""

from __future__ import annotations

from . import layers as L
from .network import INPUT


def _module(nn, layer):
    """The torch.nn module that computes `layer`, or None for the merges (summed or concatenated
    by the twin's forward)."""
    if isinstance(layer, L.Dense):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if isinstance(layer, L.Conv2D):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, groups=layer.groups, bias=layer.bias)
    if isinstance(layer, (L.BatchNorm2D, L.BatchNorm1D)):
        norm = nn.BatchNorm2d if isinstance(layer, L.BatchNorm2D) else nn.BatchNorm1d
        return norm(layer.num_features, layer.eps, layer.momentum, layer.affine)
    if isinstance(layer, L.MaxPool2D):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, L.AvgPool2D):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, L.AdaptiveAvgPool2D):
        return nn.AdaptiveAvgPool2d(layer.output_size)
    if isinstance(layer, L.LeakyReLU):
        return nn.LeakyReLU(layer.negative_slope)
    simple = {L.GlobalAvgPool2D: lambda: nn.AdaptiveAvgPool2d(1), L.Dropout: lambda: nn.Dropout(layer.p),
              L.Flatten: nn.Flatten, L.ReLU: nn.ReLU, L.ReLU6: nn.ReLU6, L.SiLU: nn.SiLU, L.Sigmoid: nn.Sigmoid,
              L.Tanh: nn.Tanh, L.Softmax: lambda: nn.Softmax(dim=1), L.Identity: nn.Identity,
              L.Add: lambda: None, L.Concatenate: lambda: None}
    if type(layer) not in simple:
        raise TypeError(f"{layer!r} has no PyTorch twin here: add it to clnet/torch_twin.py")
    return simple[type(layer)]()


def torch_twin(network):
    """A torch.nn.Module computing `network` (a clnet.network.Network, or a Model's `.network`),
    its submodules at the nodes' dotted names ("layer1.0.conv1"), so that
    `twin.load_state_dict(model.state_dict())` works (numpy arrays converted with torch.from_numpy)
    and the keys match both ways. Fresh weights: load the model's to compare.

    Example:
        >>> twin = torch_twin(model.network)
        >>> twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    """
    import torch
    from torch import nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []  # (node name, module or merge, input names) in order
            for node in network.nodes:
                module = _module(nn, node.layer)
                if module is not None:
                    *path, last = node.name.split(".")
                    parent = self
                    for part in path:
                        if not hasattr(parent, part):
                            parent.add_module(part, nn.Module())
                        parent = getattr(parent, part)
                    parent.add_module(last, module)
                self.steps.append((node.name, module if module is not None else type(node.layer), node.inputs))

        def forward(self, x):
            values = {INPUT: x}
            for name, step, inputs in self.steps:
                given = [values[i] for i in inputs]
                if step is L.Add:
                    values[name] = torch.stack(given).sum(0) if len(given) > 2 else given[0] + given[1]
                elif step is L.Concatenate:
                    values[name] = torch.cat(given, dim=1)
                else:
                    values[name] = step(*given)
            return values[network.output]

    return Twin()
