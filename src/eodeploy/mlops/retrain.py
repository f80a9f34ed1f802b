"""``eodeploy retrain``: a package's recorded recipe (``mlm:hyperparameters``, the split in its
``split.json``) on its training data plus the labelled feedback patches, giving a new candidate
version scored on the original test split and on the held-back feedback."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.eurosat import PatchDataset, Split, load_patch_folder, stratified_split
from eodeploy.errors import DataError, ModelNotFoundError
from eodeploy.mlops.feedback import Accuracy, feedback_patches
from eodeploy.mlops.triggers import mark_retrained
from eodeploy.monitor.db import Database
from eodeploy.package.repository import ModelPackage, ModelRepository
from eodeploy.settings import Settings

FEEDBACK_PREFIX = "feedback/"


#: How ``train_package`` names the package a version was fine-tuned from (``mlm:pretrained_source``).
PRETRAINED_SOURCE = re.compile(r"^(?P<name>\S+) v(?P<version>\d+) \(eodeploy package\)$")


def pretrained_source(pkg: ModelPackage, repo: ModelRepository) -> ModelPackage | None:
    """The package ``pkg`` was fine-tuned from (``--init-from``), found in ``repo``: part of the recipe
    (the bundled 13-band v3 reaches 93.7 % from the RGB network's filters, ~80 % without them)."""
    if not pkg.properties.get("mlm:pretrained"):
        return None
    named = str(pkg.properties.get("mlm:pretrained_source") or "")
    m = PRETRAINED_SOURCE.match(named)
    if m is None:
        raise DataError(
            f"{pkg.name} v{pkg.version} was fine-tuned from {named or 'an unnamed network'}, which is not an "
            "eodeploy package: retrain it with 'eodeploy train --init-from PACKAGE' instead"
        )
    try:
        return repo.get(m["name"], int(m["version"]))
    except ModelNotFoundError:
        raise DataError(
            f"{pkg.name} v{pkg.version} was fine-tuned from {m['name']} v{m['version']}, which is not in "
            f"the repository {repo.root}: add it (eodeploy models import) or retrain with 'eodeploy train --init-from'"
        ) from None


def recipe(pkg: ModelPackage) -> tuple[Any, dict[str, Any]]:
    """The ``TrainConfig`` and the ``eodeploy:training`` record a package was trained with."""
    from eodeploy.train.trainer import TrainConfig

    training = pkg.properties.get("eodeploy:training")
    hp = pkg.properties.get("mlm:hyperparameters")
    if not isinstance(training, dict) or not isinstance(hp, dict):
        raise DataError(
            f"{pkg.name} v{pkg.version} records no training recipe (eodeploy:training and "
            "mlm:hyperparameters): it was imported, not trained by eodeploy; train one with 'eodeploy train'"
        )
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in hp.items() if k in known}), training


def _as_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def retrain(
    db: Database,
    repo: ModelRepository,
    settings: Settings,
    name: str,
    data_dir: str | Path | None = None,
    version: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    epochs: int | None = None,
) -> tuple[ModelPackage, dict[str, Any]]:
    """Train a new candidate of ``name`` from ``version`` (default: latest); returns it and a summary."""
    from eodeploy.runtime.predictor import Predictor
    from eodeploy.train.pipeline import train_package

    source = repo.get(name, version)
    config, training = recipe(source)
    init = pretrained_source(source, repo)
    if init is not None:
        config = replace(config, init_from=str(init.path))
    if epochs is not None:
        config = replace(config, epochs=epochs, patience=min(config.patience, epochs))
    data_dir = Path(data_dir or settings.data_dir)
    data = load_patch_folder(data_dir)
    classes = list(source.spec.class_names)
    if data.class_names != classes:
        raise DataError(
            f"{data_dir} holds classes {data.class_names}, {name} v{source.version} has {classes}"
        )
    seed = int(training.get("split", {}).get("seed", config.seed))
    split_file = source.path / "split.json"
    split = Split.from_json(split_file.read_text()) if split_file.is_file() else stratified_split(data, seed)
    test = data.subset(split.test)  # a clear error when the recorded test files are not there
    if training.get("test_files_hash") and test.files_hash() != training["test_files_hash"]:
        raise DataError(
            f"the test split of {data_dir} is not the one {name} v{source.version} was tested on "
            "(its file list differs); point at the data it was trained on"
        )
    with db.session() as s:
        fb = feedback_patches(s, name, classes)
    train_x, train_y, train_ids = fb["train"]
    hold_x, hold_y, hold_ids = fb["holdout"]
    for x in (train_x, hold_x):
        if len(x) and x.shape[1:] != data.images.shape[1:]:
            raise DataError(
                f"feedback patches are shaped {x.shape[1:]}, the training data {data.images.shape[1:]}"
            )
    fb_files = [f"{FEEDBACK_PREFIX}{i}.npy" for i in train_ids]
    combined = PatchDataset(
        np.concatenate([data.images, _as_dtype(train_x, data.images.dtype)]) if len(train_x) else data.images,
        np.concatenate([data.labels, train_y]) if len(train_y) else data.labels,
        data.class_names, data.band_names, data.files + fb_files, data.root,
    )  # fmt: skip
    base_train = [f for f in split.train if not f.startswith(FEEDBACK_PREFIX)]
    new_split = Split(split.seed, sorted(base_train + fb_files), split.val, split.test)
    evaluations: dict[str, PatchDataset] = {}
    summary: dict[str, Any] = {"source_version": source.version, "feedback_train": len(train_ids),
                               "feedback_holdout": len(hold_ids)}  # fmt: skip
    if len(hold_ids):
        holdout = PatchDataset(_as_dtype(hold_x, data.images.dtype), hold_y, classes, data.band_names,
                               [f"{FEEDBACK_PREFIX}{i}.npy" for i in hold_ids], data.root)  # fmt: skip
        evaluations["feedback-holdout"] = holdout
        src_correct = int((Predictor(source).predict(holdout.images).class_ids == hold_y).sum())
        summary["source_on_holdout"] = Accuracy.of(
            src_correct, len(hold_y), settings.feedback_min_labels
        ).as_dict()
    props = {"eodeploy:retraining": {**summary, "feedback_ids": {"train": train_ids, "holdout": hold_ids}}}
    pkg = train_package(
        data_dir, repo, name, config, seed, on_epoch,
        dataset=combined, split=new_split, evaluations=evaluations, properties=props,
        derived_from=(name, source.version),
    )  # fmt: skip
    summary["version"] = pkg.version
    summary["test"] = {k: pkg.properties["eodeploy:metrics"][k] for k in ("n", "accuracy", "macro_f1")}
    ev = (pkg.properties.get("eodeploy:evaluations") or {}).get("feedback-holdout")
    if ev:
        correct = round(ev["accuracy"] * ev["n"])
        summary["candidate_on_holdout"] = Accuracy.of(
            correct, ev["n"], settings.feedback_min_labels
        ).as_dict()
    with db.session() as s:
        summary["triggers_answered"] = mark_retrained(s, name, pkg.version)
    return pkg, summary
