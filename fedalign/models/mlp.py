"""Multi-layer perceptron with a width and depth knob (for the width/depth sweeps)."""

import math

from torch import nn


class MLP(nn.Module):
    """`depth` hidden layers of `width` ReLU units, then a linear classifier."""

    def __init__(self, input_shape, num_classes: int, width: int = 128, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        in_features = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
