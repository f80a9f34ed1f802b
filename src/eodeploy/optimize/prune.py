"""Structured (channel) pruning with fine-tuning, for compact CNNs trained by ``eodeploy train``.

Structured, not unstructured: removing whole convolution filters (those with the smallest L1
norm, Li et al. 2017) makes the network genuinely narrower, so the ONNX file is smaller and
every runtime runs it faster. Zeroing single weights (unstructured magnitude pruning) leaves
dense kernels the same size and speed on CPUs. The narrower network is then fine-tuned on the
package's training split to recover accuracy.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.errors import DataError
from eodeploy.optimize.methods import OptimizationError
from eodeploy.package.repository import ModelPackage


def _conv_blocks(model: Any) -> list[Any]:
    import torch

    return [m for m in model.features if isinstance(m, torch.nn.Sequential)]


def prune_compact_cnn(model: Any, rate: float) -> tuple[Any, list[int]]:
    """A narrower copy of ``model`` keeping the (1 - rate) filters of largest L1 norm per layer."""
    import torch

    from eodeploy.train.models import CompactCNN

    blocks = _conv_blocks(model)
    keep: list[torch.Tensor] = []
    for block in blocks:
        w = block[0].weight.detach()
        n = max(4, int(round(w.shape[0] * (1 - rate))))
        keep.append(torch.argsort(w.abs().sum(dim=(1, 2, 3)), descending=True)[:n].sort().values)
    in_ch = blocks[0][0].weight.shape[1]
    n_classes = model.head[-1].weight.shape[0]
    small = CompactCNN(in_ch, n_classes, widths=[len(k) for k in keep])
    prev = torch.arange(in_ch)
    with torch.no_grad():
        for src, dst, k in zip(blocks, _conv_blocks(small), keep):
            dst[0].weight.copy_(src[0].weight[k][:, prev])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst[1], attr).copy_(getattr(src[1], attr)[k])
            prev = k
        small.head[-1].weight.copy_(model.head[-1].weight[:, prev])
        small.head[-1].bias.copy_(model.head[-1].bias)
    return small, [len(k) for k in keep]


def load_weights(package: ModelPackage) -> Any:
    import torch

    from eodeploy.train.models import CompactCNN

    info = package.properties.get("eodeploy:weights")
    path = package.path / (info or {}).get("file", "weights.pt")
    if not info or not path.is_file():
        raise OptimizationError(
            f"{package.name} v{package.version} carries no PyTorch weights (weights.pt); pruning needs a model "
            "trained by `eodeploy train` (imported models can be quantised instead: --int8)"
        )
    if info.get("arch") != "compact-cnn":
        raise OptimizationError(f"structured pruning supports compact-cnn, not {info.get('arch')!r}")
    spec = package.spec
    model = CompactCNN(len(spec.bands), len(spec.classes), widths=info.get("pruned"))
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def prune_and_finetune(
    package: ModelPackage,
    data_dir: str | Path,
    rate: float,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    epochs: int = 20,
) -> tuple[bytes, dict[str, Any], bytes]:
    import torch

    from eodeploy.evaluate.report import load_for_package
    from eodeploy.runtime.predictor import Predictor
    from eodeploy.train.trainer import TrainConfig, export_onnx, train_classifier

    if not 0 < rate < 1:
        raise OptimizationError(f"prune rate {rate} must be between 0 and 1 (0.5 removes half the filters)")
    info = package.properties.get("eodeploy:weights") or {}
    model = load_weights(package)
    small, widths = prune_compact_cnn(model, rate)
    predictor = Predictor(package)
    if not (package.path / "split.json").is_file():
        raise DataError(f"{package.name} v{package.version} records no split to fine-tune on")
    train = load_for_package(predictor, data_dir, "train")
    val = load_for_package(predictor, data_dir, "val")
    # Fine-tune on train + val, as the refit that made the source did.
    images = np.concatenate([train.images, val.images])
    labels = np.concatenate([train.labels, val.labels])
    hp = package.properties.get("mlm:hyperparameters") or {}
    config = TrainConfig(
        arch="compact-cnn", epochs=epochs, patience=epochs + 1, lr=float(hp.get("lr", 3e-3)) / 3,
        seed=int(hp.get("seed", 0)), select_best=False, tta=bool(info.get("tta", True)),
    )  # fmt: skip
    result = train_classifier(
        package.spec, images, labels, val.images, val.labels, config, on_epoch, model=small
    )
    buf = io.BytesIO()
    torch.save(result.model.state_dict(), buf)
    onnx_bytes = export_onnx(result.model, package.spec, tta=config.tta)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in result.model.parameters())
    recipe = {
        "method": "prune-structured-l1",
        "rate": rate,
        "kept_channels": widths,
        "parameters_before": int(before),
        "parameters_after": int(after),
        "finetune_epochs": epochs,
        "finetune_lr": config.lr,
    }
    return onnx_bytes, recipe, buf.getvalue()
