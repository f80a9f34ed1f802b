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


class ResNet(nn.Module):  # type: ignore[misc,name-defined]
    """A ResNet for 64x64 patches of any band count: 3x3 stem, no max-pool, basic blocks."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 64,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        stem_stride: int = 1,
    ):
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w, stem_stride)
        layers = []
        cin = w
        for i, (cout, n) in enumerate(zip([w, 2 * w, 4 * w, 8 * w], blocks)):
            for k in range(n):
                layers.append(_BasicBlock(cin, cout, 2 if i > 0 and k == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes))

    def forward(self, x: Any) -> Any:
        return self.head(self.layers(self.stem(x)))


def ResNet18(in_channels: int, n_classes: int, width: int = 64) -> ResNet:
    """ResNet-18: two blocks per stage at full resolution (about 11 M parameters at width 64)."""
    return ResNet(in_channels, n_classes, width)


def ResNet10(in_channels: int, n_classes: int, width: int = 32) -> ResNet:
    """One block per stage after a stride-2 stem: 1.2 M parameters, about 5x cheaper per patch
    than ResNet-18 at width 32; sized for thousands of patches trained on a CPU."""
    return ResNet(in_channels, n_classes, width, blocks=(1, 1, 1, 1), stem_stride=2)


ARCHITECTURES = {
    "compact-cnn": CompactCNN,
    "spectral-cnn": SpectralCNN,
    "resnet10": ResNet10,
    "resnet18": ResNet18,
}
ARCHITECTURE_NAMES = {"compact-cnn": "CompactCNN", "resnet10": "ResNet-10", "resnet18": "ResNet-18"}


def build_model(arch: str, in_channels: int, n_classes: int, **kwargs: Any) -> Any:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_channels, n_classes, **kwargs)
