"""Every layer of clnet.layers with constructor arguments and awkward input shapes (batch 1, odd
sizes, non-square and one-row images, strides, padding, dilation, groups), gathered from the layers' own
tests. test_layers.py checks each entry's forward pass against the layer's float64 reference and
its ONNX export, and fails when a layer of clnet.layers has no entry: a new layer is its file in
clnet/layers plus its entries here. A layer of several inputs (arity None) has a list of input
shapes, one per input."""

from clnet import layers as L

# (layer, input shape per sample (a list of them for several inputs), batch size)
LAYER_CASES = [
    (L.Dense(7, 3), (7,), 1),                                          # batch 1, odd sizes
    (L.Dense(5, 4, bias=False), (5,), 3),
    (L.Conv2D(3, 4, 3), (3, 7, 5), 2),                                  # non-square, no padding
    (L.Conv2D(1, 2, 3, stride=2, padding=1), (1, 6, 6), 1),             # batch 1, stride 2, padding
    (L.Conv2D(2, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), bias=False), (2, 9, 8), 3),
    (L.Conv2D(3, 4, 4, padding="same"), (3, 5, 6), 2),                  # even kernel: asymmetric "same"
    (L.Conv2D(2, 3, 2, stride=3), (2, 5, 5), 2),                        # stride larger than the kernel
    (L.Conv2D(6, 9, 3, padding=1, groups=3), (6, 7, 5), 2),             # groups dividing no tile size
    (L.Conv2D(12, 8, (3, 2), stride=(2, 1), groups=4, bias=False), (12, 7, 9), 3),  # odd sizes, 3 -> 2 a group
    (L.Conv2D(4, 8, 3, padding=2, dilation=2, groups=2), (4, 9, 8), 1),  # dilation with groups
    (L.Conv2D(5, 5, 3, stride=2, padding=1, groups=5), (5, 9, 7), 2),   # depthwise, stride 2 and padding
    (L.Conv2D(3, 6, (2, 3), padding="same", groups=3), (3, 5, 6), 2),   # depthwise, multiplier 2, "same"
    (L.Conv2D(4, 8, 3, stride=(2, 1), dilation=(2, 1), groups=4, bias=False), (4, 9, 8), 3),
    (L.MaxPool2D(2), (1, 7, 5), 1),                                     # windows divide neither 7 nor 5
    (L.MaxPool2D((3, 2), stride=(2, 1), padding=1), (3, 9, 8), 3),      # rectangular, overlapping
    (L.MaxPool2D((1, 3), stride=(1, 2), padding=(0, 1)), (5, 1, 9), 2),  # a one-row image
    (L.AvgPool2D(3, stride=1, padding=1), (3, 7, 5), 3),                # padding counted in the mean
    (L.AvgPool2D((3, 2), stride=4, padding=1), (3, 5, 4), 1),           # stride larger than the kernel
    (L.GlobalAvgPool2D(), (3, 7, 5), 2),
    (L.GlobalAvgPool2D(), (2, 1, 9), 1),
    (L.AdaptiveAvgPool2D(7), (3, 1, 1), 2),                             # a 1x1 image repeated 7x7 (VGG at 32x32)
    (L.AdaptiveAvgPool2D((3, 2)), (2, 7, 5), 3),                        # overlapping bins of unequal sizes
    (L.AdaptiveAvgPool2D((2, 3)), (3, 4, 9), 1),                        # bins that divide the image
    (L.AdaptiveAvgPool2D(1), (2, 5, 3), 2),                             # global
    (L.AdaptiveAvgPool2D((5, 4)), (1, 3, 9), 2),                        # rows repeated, columns overlapping
    (L.BatchNorm2D(3), (3, 7, 5), 1),
    (L.BatchNorm2D(5, eps=1e-3, affine=False), (5, 2, 6), 3),
    (L.BatchNorm1D(7), (7,), 5),
    (L.BatchNorm1D(3, affine=False), (3, 9), 4),                        # sequences (F, L)
    (L.Dropout(0.3), (5, 3), 2),
    (L.Flatten(), (3, 7, 5), 2),
    (L.ReLU(), (3, 7, 5), 1),
    (L.Sigmoid(), (9,), 3),
    (L.Tanh(), (2, 5), 2),
    (L.ReLU6(), (3, 7, 5), 2),
    (L.LeakyReLU(), (9,), 3),
    (L.LeakyReLU(0.2), (2, 5), 1),
    (L.LeakyReLU(-0.3), (3, 1, 7), 2),                                  # negative slope: backward reads x
    (L.SiLU(), (3, 7, 5), 1),
    (L.Identity(), (3, 7, 5), 2),
    (L.Identity(), (9,), 1),
    (L.Softmax(), (7,), 3),
    (L.Softmax(), (1,), 1),                                             # one feature: all ones
    (L.Add(), [(3, 7, 5), (3, 7, 5)], 2),
    (L.Add(), [(9,), (9,), (9,)], 1),                                   # three inputs, batch 1
    (L.Concatenate(), [(3, 7, 5), (5, 7, 5)], 2),                       # unequal channels, odd H, W
    (L.Concatenate(), [(2, 1, 9), (1, 1, 9), (4, 1, 9)], 1),            # three inputs, a one-row image
    (L.Concatenate(), [(7,), (2,)], 3),                                 # feature vectors
]


def case_id(case):
    layer, shape, batch = case
    shapes = shape if isinstance(shape, list) else [shape]
    return f"{layer!r}-{'+'.join('x'.join(map(str, (batch, *s))) for s in shapes)}".replace(" ", "")
