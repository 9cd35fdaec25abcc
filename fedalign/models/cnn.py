"""The small CNN of SPEC §7: conv 32-64-64 (3x3, same padding) + fc 64."""

import torch
from torch import nn


class CNN(nn.Module):
    """conv32-pool-conv64-pool-conv64-fc64-fc(classes); works for 8x8 to 32x32 inputs."""

    def __init__(self, input_shape, num_classes: int, width: int = 1) -> None:
        super().__init__()
        c = input_shape[0]
        w1, w2 = 32 * width, 64 * width
        self.conv1 = nn.Conv2d(c, w1, 3, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1)
        self.conv3 = nn.Conv2d(w2, w2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        with torch.no_grad():
            flat = self._features(torch.zeros(1, *input_shape)).shape[1]
        self.fc1 = nn.Linear(flat, 64 * width)
        self.fc2 = nn.Linear(64 * width, num_classes)

    def _features(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return torch.flatten(self.act(self.conv3(x)), 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self._features(x))))
