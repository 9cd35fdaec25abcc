"""VGG-11 for small images, optionally normalized, with a width multiplier."""

from torch import nn

from fedalign.models.norms import make_norm

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    def __init__(self, input_shape, num_classes: int, width: float = 1.0, norm: str = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = input_shape[0], input_shape[-1]
        for v in VGG11_CFG:
            if v == "M":
                if size >= 2:  # small inputs (digits 8x8) skip pools that would empty the map
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = int(v * width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), make_norm(norm, out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
