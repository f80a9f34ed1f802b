"""From a EuroSAT-layout folder to a new, evaluated model package version."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.eurosat import PatchDataset, Split, load_patch_folder, stratified_split
from eodeploy.errors import PackageIntegrityError
from eodeploy.evaluate.metrics import classification_report, stored_metrics
from eodeploy.package.repository import ModelPackage, ModelRepository
from eodeploy.package.spec import ModelSpec, default_classes
from eodeploy.package.stats import reference_statistics, zscore_scaling
from eodeploy.train.trainer import (
    TrainConfig,
    TrainResult,
    export_onnx,
    predict_probabilities,
    train_classifier,
)


def spec_for(data: PatchDataset, train: PatchDataset, name: str, arch: str) -> ModelSpec:
    import torch

    from eodeploy.train.models import ARCHITECTURE_NAMES

    return ModelSpec(
        name=name,
        bands=list(data.band_names),
        height=int(data.images.shape[2]),
        width=int(data.images.shape[3]),
        classes=default_classes(data.class_names),
        value_scaling=zscore_scaling(train.images),
        architecture=ARCHITECTURE_NAMES.get(arch, arch),
        framework="PyTorch",
        framework_version=torch.__version__.split("+")[0],
        description=f"{arch} land-cover patch classifier trained by eodeploy on {data.root.name}",
        units=training_units(data.images.dtype),
    )


def training_units(dtype: np.dtype) -> str:
    """8-bit patches are EuroSAT's true-colour rendering; anything else Sentinel-2 numbers."""
    return "rgb8" if dtype == np.uint8 else "dn"


def _start(data: PatchDataset, train: PatchDataset, name: str, config: TrainConfig) -> tuple[ModelSpec, Any]:
    """The spec and the starting network: a new one, or ``config.init_from``'s weights."""
    if not config.init_from:
        return spec_for(data, train, name, config.arch), None
    from eodeploy.train.transfer import pretrained_network, source_arch

    source = ModelPackage(config.init_from)
    spec = spec_for(data, train, name, source_arch(source))
    model, spec = pretrained_network(source, spec)
    return spec, model


def fit_split(
    data: PatchDataset,
    split: Split,
    config: TrainConfig,
    name: str = "model",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[ModelSpec, TrainResult, dict[str, Any]]:
    """Train on one split; returns the spec, the trained network and its test report."""
    import torch

    train, val, test = data.subset(split.train), data.subset(split.val), data.subset(split.test)
    spec, model = _start(data, train, name, config)
    result = train_classifier(
        spec, train.images, train.labels, val.images, val.labels, config, on_epoch, model
    )
    if config.refit:
        both = data.subset(split.train + split.val)
        spec, model = _start(data, both, name, config)
        refit_cfg = replace(config, epochs=result.best_epoch, patience=config.epochs + 1, select_best=False)
        chosen = result
        result = train_classifier(
            spec, both.images, both.labels, val.images, val.labels, refit_cfg, on_epoch, model
        )
        result.best_epoch, result.best_val_accuracy = chosen.best_epoch, chosen.best_val_accuracy
    from eodeploy.runtime.preprocess import preprocess

    # Score what will be exported (with TTA: probabilities averaged over the 8 flips/rotations).
    proba = predict_probabilities(
        result.model, torch.from_numpy(preprocess(test.images, spec)), tta=config.tta
    )
    pred = proba.argmax(1).numpy()
    return spec, result, classification_report(test.labels, pred, data.class_names)


def train_package(
    data_dir: str | Path,
    repo: ModelRepository,
    name: str,
    config: TrainConfig,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    cv: dict[str, Any] | None = None,
    *,
    dataset: PatchDataset | None = None,
    split: Split | None = None,
    evaluations: dict[str, PatchDataset] | None = None,
    properties: dict[str, Any] | None = None,
    derived_from: tuple[str, int] | None = None,
) -> ModelPackage:
    """Train on the seeded split of ``data_dir`` and write the model as a new version.

    Retraining (``eodeploy.mlops.retrain``) passes the data and split itself (the recorded split
    plus feedback patches), extra labelled sets scored before publishing (``evaluations``), more
    item properties and the version it derives from."""
    from eodeploy.runtime.predictor import Predictor

    data = dataset if dataset is not None else load_patch_folder(data_dir)
    split = split if split is not None else stratified_split(data, seed=seed)
    source = ModelPackage(config.init_from) if config.init_from else None
    if source is not None:
        from eodeploy.train.transfer import source_arch

        config = replace(config, arch=source_arch(source))
    spec, result, torch_report = fit_split(data, split, config, name, on_epoch)
    # Reference statistics describe the data the final weights were fitted on.
    train = data.subset(split.train + split.val if config.refit else split.train)
    onnx_bytes = export_onnx(result.model, spec, tta=config.tta)
    props = {
        "mlm:total_parameters": int(sum(p.numel() for p in result.model.parameters())),
        "mlm:pretrained": source is not None,
        **(
            {"mlm:pretrained_source": f"{source.name} v{source.version} (eodeploy package)"} if source else {}
        ),
        "mlm:batch_size_suggestion": 64,
        "mlm:accelerator": None,
        # init_from is a path on the training machine: the source is named in mlm:pretrained_source.
        "mlm:hyperparameters": {
            k: v for k, v in asdict(config).items() if v is not None and k != "init_from"
        },
        "eodeploy:training": {
            "data": str(Path(data_dir).name),
            "data_files": len(data),
            "data_hash": data.files_hash(),
            "train_files_hash": train.files_hash(),
            "test_files_hash": data.subset(split.test).files_hash(),
            "split": {
                "seed": seed,
                "train": len(split.train),
                "val": len(split.val),
                "test": len(split.test),
            },
            "best_epoch": result.best_epoch,
            "best_val_accuracy": round(result.best_val_accuracy, 4),
            "seconds": round(result.seconds, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "eodeploy:reference_stats": reference_statistics(
            train.images, train.labels, data.band_names, data.class_names
        ),
    }
    if cv:
        props["eodeploy:cross_validation"] = cv
    props.update(properties or {})

    def check(folder: Path) -> None:
        # The exported ONNX must compute what the trained network computes before it is published.
        import torch

        from eodeploy.runtime.preprocess import preprocess

        test = data.subset(split.test)
        candidate = ModelPackage(folder)
        onnx_proba = Predictor(candidate).predict_proba(test.images)
        torch_proba = predict_probabilities(
            result.model, torch.from_numpy(preprocess(test.images, spec)), tta=config.tta
        )
        diff = float(abs(onnx_proba - torch_proba.numpy()).max())
        if diff > 1e-4:
            raise PackageIntegrityError(
                f"the ONNX export differs from the trained network by {diff:.2g}; nothing was written"
            )
        # Test metrics from the ONNX model through the one predictor path, recorded before the
        # version is published (published versions are never modified).
        pred = Predictor(candidate).predict(test.images).class_ids
        report = classification_report(test.labels, pred, data.class_names)
        updates: dict[str, Any] = {"eodeploy:metrics": stored_metrics(report)}
        for key, extra in (evaluations or {}).items():
            r = classification_report(extra.labels, Predictor(candidate).predict(extra.images).class_ids,
                                      data.class_names)  # fmt: skip
            updates.setdefault("eodeploy:evaluations", {})[key] = {
                k: r[k] for k in ("n", "accuracy", "macro_f1", "confusion_matrix")
            }
        candidate.update_properties(updates)

    # The PyTorch weights travel with the package so it can be pruned and fine-tuned later.
    props["eodeploy:weights"] = {"file": WEIGHTS_FILE, "arch": config.arch, "tta": config.tta}
    files = {"split.json": split.to_json().encode(), WEIGHTS_FILE: state_dict_bytes(result.model)}
    derived = derived_from or (
        (source.name, source.version)
        if source is not None and source.path.parent.parent.resolve() == repo.root.resolve()
        else None
    )
    return repo.add(name, onnx_bytes, spec, props, files=files, check=check, derived_from=derived)


WEIGHTS_FILE = "weights.pt"


def state_dict_bytes(model: Any) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def cross_validate(
    data_dir: str | Path,
    config: TrainConfig,
    seeds: list[int],
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Repeat the seeded split + training for each seed; mean and spread of test accuracy."""
    data = load_patch_folder(data_dir)
    if config.init_from:
        from eodeploy.train.transfer import source_arch

        config = replace(config, arch=source_arch(ModelPackage(config.init_from)))
    accs, f1s = [], []
    for s in seeds:
        cfg = TrainConfig(**{**asdict(config), "seed": s})
        _, _, report = fit_split(data, stratified_split(data, seed=s), cfg)
        accs.append(report["accuracy"])
        f1s.append(report["macro_f1"])
        if on_result:
            on_result(s, report)
    return {
        "seeds": seeds,
        "test_accuracy": [round(a, 4) for a in accs],
        "test_accuracy_mean": round(float(np.mean(accs)), 4),
        "test_accuracy_std": round(float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, 4),
        "macro_f1_mean": round(float(np.mean(f1s)), 4),
    }
