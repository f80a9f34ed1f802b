from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, write_patch
from eodeploy.data import load_patch_folder, read_image, stratified_split
from eodeploy.errors import DataError


def test_load_folder(eurosat_dir: Path) -> None:
    d = load_patch_folder(eurosat_dir)
    assert d.images.shape == (24, 13, 64, 64)
    assert d.images.dtype == np.uint16
    assert d.class_names == CLASSES
    assert np.bincount(d.labels).tolist() == [8, 8, 8]
    assert d.band_names[-1] == "B8A"
    assert d.files[0] == "Forest/Forest_0.tif"


def test_split_is_stratified_seeded_and_disjoint(eurosat_dir: Path) -> None:
    d = load_patch_folder(eurosat_dir)
    a, b, c = stratified_split(d, 0), stratified_split(d, 0), stratified_split(d, 1)
    assert a == b and a != c
    assert not set(a.train) & set(a.test) and not set(a.val) & set(a.test)
    assert sorted(a.train + a.val + a.test) == sorted(d.files)
    for cls in CLASSES:  # every class is measured, even with 8 files
        assert sum(f.startswith(cls + "/") for f in a.test) >= 1
        assert sum(f.startswith(cls + "/") for f in a.val) >= 1


def test_split_keeps_twins_of_a_patch_on_one_side() -> None:
    """EuroSAT-MS and EuroSAT-RGB name the two renderings of one ground patch alike: whatever
    else each data set holds, a patch lands on the same side in both, for every seed."""
    from eodeploy.data.eurosat import PatchDataset

    def dataset(files: list[str], suffix: str) -> PatchDataset:
        names = [f"{f}{suffix}" for f in files]
        labels = np.array([CLASSES.index(f.split("/")[0]) for f in files])
        return PatchDataset(np.zeros((len(files), 1, 2, 2)), labels, CLASSES, ["b"], names)

    everything = [f"{c}/{c}_{i}" for c in CLASSES for i in range(3000)]
    ms = dataset(everything[::40], ".tif")  # a small subset, as ../shared/data/eurosat
    rgb = dataset(everything, ".jpg")
    for seed in (0, 1):
        small, big = stratified_split(ms, seed), stratified_split(rgb, seed)
        for side in ("train", "val", "test"):
            stems = {f.rsplit(".", 1)[0] for f in getattr(small, side)}
            assert stems <= {f.rsplit(".", 1)[0] for f in getattr(big, side)}, side
        shares = [len(big.test) / len(everything), len(big.val) / len(everything)]
        assert shares == pytest.approx([0.2, 0.2], abs=0.01)


def test_rgb_jpeg_and_npy(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(tmp_path / "a.jpg")
    assert read_image(tmp_path / "a.jpg").shape == (3, 64, 64)
    np.save(tmp_path / "b.npy", np.ones((64, 64, 13), np.float32))
    assert read_image(tmp_path / "b.npy").shape == (13, 64, 64)


def test_corrupt_and_unsupported_files(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="bad.tif: cannot be read"):
        read_image(tmp_path / "bad.tif")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        read_image(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        read_image(tmp_path / "missing.tif")


def test_folder_errors(tmp_path: Path, eurosat_dir: Path) -> None:
    with pytest.raises(DataError, match="no class folders with images"):
        load_patch_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_patch_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="not classes of the model"):
        load_patch_folder(eurosat_dir, class_names=["Forest"])
    (tmp_path / "A").mkdir()
    write_patch(tmp_path / "A" / "1.tif", np.ones((13, 64, 64), np.uint16))
    write_patch(tmp_path / "A" / "2.tif", np.ones((13, 32, 32), np.uint16))
    with pytest.raises(DataError, match="differs from"):
        load_patch_folder(tmp_path)
