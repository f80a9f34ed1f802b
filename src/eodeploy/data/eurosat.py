"""EuroSAT in its published layout: one folder per class of GeoTIFF (MS) or JPEG (RGB) patches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eodeploy.data.images import IMAGE_SUFFIXES, read_image
from eodeploy.errors import DataError

#: Band order of the EuroSAT-MS GeoTIFFs (B8A comes last, after B12).
EUROSAT_MS_BANDS = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B09", "B10", "B11", "B12", "B8A",
]  # fmt: skip
EUROSAT_RGB_BANDS = ["B04", "B03", "B02"]
EUROSAT_CLASSES = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
]  # fmt: skip


@dataclass
class PatchDataset:
    """Raw patches (N, bands, H, W) with integer labels and the files they came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    band_names: list[str]
    files: list[str]  # paths relative to root, with forward slashes
    root: Path = field(default_factory=Path)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, files: list[str]) -> PatchDataset:
        index = {f: i for i, f in enumerate(self.files)}
        missing = [f for f in files if f not in index]
        if missing:
            raise DataError(
                f"{len(missing)} file(s) of the recorded split are not in {self.root} "
                f"(first: {missing[0]}); point at the same data the model was trained on"
            )
        rows = np.array([index[f] for f in files], dtype=np.int64)
        return PatchDataset(
            self.images[rows], self.labels[rows], self.class_names, self.band_names,
            list(files), self.root,
        )  # fmt: skip

    def files_hash(self) -> str:
        """sha256 of the sorted 'class/file' list: identifies the data a model saw."""
        text = "\n".join(sorted(self.files))
        return hashlib.sha256(text.encode()).hexdigest()


def find_patch_files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give a folder of class sub-folders (EuroSAT layout)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    found = {k: v for k, v in found.items() if v}
    if not found:
        raise DataError(
            f"{root}: no class folders with images (.tif, .jpg, .png, .npy) found; "
            "expected <root>/<ClassName>/<image files>"
        )
    return found


def load_patch_folder(
    root: str | Path,
    class_names: list[str] | None = None,
    band_names: list[str] | None = None,
) -> PatchDataset:
    """Load every patch below ``root``; all must share band count and size.

    ``class_names`` fixes the label order (a model's classes); unknown folders are an error.
    """
    root = Path(root)
    found = find_patch_files(root)
    names = list(class_names) if class_names is not None else sorted(found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(
            f"{root}: class folder(s) {unknown} are not classes of the model {names}; "
            "remove them or use a model trained on those classes"
        )
    images, labels, files = [], [], []
    for cls, paths in found.items():
        for path in paths:
            arr = read_image(path)
            if images and arr.shape != images[0].shape:
                raise DataError(
                    f"{path}: shape {arr.shape} (bands, height, width) differs from "
                    f"{images[0].shape} of the other patches; all patches must be alike"
                )
            images.append(arr)
            labels.append(names.index(cls))
            files.append(path.relative_to(root).as_posix())
    stack = np.stack(images)
    if band_names is None:
        band_names = _default_band_names(stack.shape[1])
    return PatchDataset(stack, np.array(labels, dtype=np.int64), names, band_names, files, root)


def _default_band_names(n: int) -> list[str]:
    if n == len(EUROSAT_MS_BANDS):
        return list(EUROSAT_MS_BANDS)
    if n == 3:
        return list(EUROSAT_RGB_BANDS)
    return [f"band{i + 1}" for i in range(n)]


@dataclass(frozen=True)
class Split:
    """A seeded, stratified train/validation/test split, recorded as file lists."""

    seed: int
    train: list[str]
    val: list[str]
    test: list[str]

    def to_json(self) -> str:
        return json.dumps(
            {"seed": self.seed, "train": self.train, "val": self.val, "test": self.test}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> Split:
        d = json.loads(text)
        return cls(int(d["seed"]), list(d["train"]), list(d["val"]), list(d["test"]))


def stratified_split(data: PatchDataset, seed: int = 0, val: float = 0.2, test: float = 0.2) -> Split:
    """Per class, shuffle the sorted files with ``seed`` and cut val/test shares off the front."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in range(len(data.class_names)):
        files = sorted(f for f, y in zip(data.files, data.labels) if y == label)
        files = [files[i] for i in rng.permutation(len(files))]
        n_test = max(1, round(len(files) * test)) if len(files) >= 3 else 0
        n_val = max(1, round(len(files) * val)) if len(files) >= 3 else 0
        out["test"] += files[:n_test]
        out["val"] += files[n_test : n_test + n_val]
        out["train"] += files[n_test + n_val :]
    return Split(seed, sorted(out["train"]), sorted(out["val"]), sorted(out["test"]))
