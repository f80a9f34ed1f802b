"""The download path end to end, served from a local file:// URL (no network here)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from eodeploy.data import download
from eodeploy.data.download import Archive, download_eurosat, md5_file
from eodeploy.errors import DataError


@pytest.fixture
def archive(tmp_path: Path, eurosat_dir: Path) -> Path:
    zpath = tmp_path / "src" / "EuroSAT.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as z:
        for f in eurosat_dir.rglob("*.tif"):
            z.write(f, Path("2750") / f.relative_to(eurosat_dir))
    return zpath


def test_download_verifies_and_unpacks(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arc = Archive(archive.as_uri(), "EuroSAT.zip", md5_file(archive), "2750")
    monkeypatch.setitem(download.EUROSAT, "rgb", arc)
    root = download_eurosat(tmp_path / "dl", "rgb")
    assert sorted(p.name for p in root.iterdir()) == ["Forest", "River", "SeaLake"]
    assert download_eurosat(tmp_path / "dl", "rgb") == root  # second call reuses the archive


def test_checksum_mismatch_leaves_nothing(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(download.EUROSAT, "rgb", Archive(archive.as_uri(), "EuroSAT.zip", "0" * 32, "2750"))
    with pytest.raises(DataError, match="checksum mismatch"):
        download_eurosat(tmp_path / "dl", "rgb")
    assert list((tmp_path / "dl").iterdir()) == []
    with pytest.raises(DataError, match="unknown EuroSAT variant"):
        download_eurosat(tmp_path / "dl", "hyperspectral")
