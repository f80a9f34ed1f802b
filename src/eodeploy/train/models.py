"""Network architectures for patch classification (PyTorch, the ``train`` extra)."""

from __future__ import annotations

from typing import Any

from eodeploy._lazy import lazy_import

torch = lazy_import("torch", "train")
nn = torch.nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> Any:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):  # type: ignore[misc,name-defined]
    """The guide's small CNN made sturdier: conv-BN blocks, global pooling, dropout.

    Sized for a few hundred training patches (about 0.1 M parameters), so it does not just
    memorise them.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 32,
        dropout: float = 0.3,
        widths: list[int] | None = None,
    ):
        super().__init__()
        w = width
        # ``widths`` gives each conv block's channels (a structurally pruned network).
        c = widths or [w, w, 2 * w, 2 * w, 4 * w]
        self.features = nn.Sequential(
            _conv_bn(in_channels, c[0]),
            nn.MaxPool2d(2),  # 32x32
            _conv_bn(c[0], c[1]),
            nn.MaxPool2d(2),  # 16x16
            _conv_bn(c[1], c[2]),
            _conv_bn(c[2], c[3]),
            nn.MaxPool2d(2),  # 8x8
            _conv_bn(c[3], c[4]),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c[4], n_classes)
        )

    def forward(self, x: Any) -> Any:
        return self.head(self.features(x))


class SpectralCNN(nn.Module):  # type: ignore[misc,name-defined]
    """Per-pixel spectral layers (1x1 convolutions) first, then a light spatial stack.

    With a few dozen patches per class the spectrum carries most of the signal; 1x1 layers
    learn it from every pixel, which is far more data than whole patches.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        w = width
        self.spectral = nn.Sequential(
            nn.Conv2d(in_channels, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.spatial = nn.Sequential(
            nn.MaxPool2d(2),  # 32
            _conv_bn(w, w),
            nn.MaxPool2d(2),  # 16
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2),  # 8
            _conv_bn(2 * w, 2 * w),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * w + w, n_classes))

    def forward(self, x: Any) -> Any:
        s = self.spectral(x)
        pooled = torch.cat([self.spatial(s).mean(dim=(2, 3)), s.mean(dim=(2, 3))], dim=1)
        return self.head(pooled)


class _BasicBlock(nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Any) -> Any:
        return self.relu(self.body(x) + self.skip(x))


class ResNet18(nn.Module):  # type: ignore[misc,name-defined]
    """ResNet-18 for multispectral 64x64 patches: 3x3 stem, no max-pool, any band count."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 64):
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w)
        layers = []
        cin = w
        for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes))

    def forward(self, x: Any) -> Any:
        return self.head(self.layers(self.stem(x)))


ARCHITECTURES = {"compact-cnn": CompactCNN, "spectral-cnn": SpectralCNN, "resnet18": ResNet18}


def build_model(arch: str, in_channels: int, n_classes: int, **kwargs: Any) -> Any:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_channels, n_classes, **kwargs)
