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
    cache: bool = True,
) -> PatchDataset:
    """Load every patch below ``root``; all must share band count and size.

    ``class_names`` fixes the label order (a model's classes); unknown folders are an error.
    Decoded pixels are cached (``EODEPLOY_CACHE_DIR``, keyed by every file's name, size and
    modification time), so 25,000 JPEGs are decoded once, not on every training run.
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
    paths = [(cls, path) for cls, ps in found.items() for path in ps]
    labels = np.array([names.index(cls) for cls, _ in paths], dtype=np.int64)
    files = [path.relative_to(root).as_posix() for _, path in paths]
    stack = _cached_stack(root, [p for _, p in paths]) if cache else None
    if stack is None:
        stack = _decode_all([p for _, p in paths])
        if cache:
            _store_cache(root, [p for _, p in paths], stack)
    if band_names is None:
        band_names = _default_band_names(stack.shape[1])
    return PatchDataset(stack, labels, names, band_names, files, root)


def _decode_all(paths: list[Path]) -> np.ndarray:
    images: list[np.ndarray] = []
    for path in paths:
        arr = read_image(path)
        if images and arr.shape != images[0].shape:
            raise DataError(
                f"{path}: shape {arr.shape} (bands, height, width) differs from "
                f"{images[0].shape} of the other patches; all patches must be alike"
            )
        images.append(arr)
    return np.stack(images)


def _cache_file(root: Path, paths: list[Path]) -> Path:
    from eodeploy.settings import cache_dir

    h = hashlib.sha256(str(root.resolve()).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return cache_dir() / "patches" / f"{h.hexdigest()[:32]}.npy"


def _cached_stack(root: Path, paths: list[Path]) -> np.ndarray | None:
    if len(paths) < CACHE_MIN_FILES:
        return None
    f = _cache_file(root, paths)
    try:
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return np.ascontiguousarray(arr) if arr.shape[0] == len(paths) else None


def _store_cache(root: Path, paths: list[Path], stack: np.ndarray) -> None:
    if len(paths) < CACHE_MIN_FILES:
        return
    from eodeploy._files import atomic_write_bytes

    f = _cache_file(root, paths)
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.save(buf, stack, allow_pickle=False)
        atomic_write_bytes(f, buf.getvalue())
    except OSError:  # a read-only home is no reason to fail training
        pass


#: Folders with fewer patches than this are decoded directly (a cache would not pay off).
CACHE_MIN_FILES = 2000


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


def patch_group(file: str) -> str:
    """The ground patch a file shows: its stem (``Forest/Forest_12.tif`` -> ``Forest_12``).

    EuroSAT-MS and EuroSAT-RGB name the two renderings of one patch alike, so a split made on
    groups puts both on the same side.
    """
    return Path(file).stem


def stratified_split(data: PatchDataset, seed: int = 0, val: float = 0.2, test: float = 0.2) -> Split:
    """Seeded train/validation/test split by patch group, the same for every data set.

    Each group's side is decided by a hash of the seed and the group name alone, so the
    13-band and the RGB rendering of one ground patch always land on the same side (a model
    pretrained on RGB and fine-tuned on 13 bands never sees its test patches). Shares are per
    class in expectation (class folders are split independently of each other's size).
    """
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in range(len(data.class_names)):
        files = sorted(
            (f for f, y in zip(data.files, data.labels) if y == label),
            key=lambda f: _unit_hash(f"{seed}/{patch_group(f)}"),
        )
        sides = {"train": [], "val": [], "test": []}  # type: dict[str, list[str]]
        for f in files:
            u = _unit_hash(f"{seed}/{patch_group(f)}")
            sides["test" if u < test else "val" if u < test + val else "train"].append(f)
        # A tiny class (a handful of files) may draw no test or validation file: its last train
        # files are moved over, so every class is measured. Real data sets never need this.
        if len(files) >= 3:
            for side, share in (("test", test), ("val", val)):
                if share > 0 and not sides[side] and len(sides["train"]) > 1:
                    sides[side].append(sides["train"].pop())
        for side, chosen in sides.items():
            out[side] += chosen
    return Split(seed, sorted(out["train"]), sorted(out["val"]), sorted(out["test"]))


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64
