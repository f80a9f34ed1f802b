"""Download the official EuroSAT archives, verify their checksums and unpack them."""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eodeploy._files import file_digest
from eodeploy.errors import DataError


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str
    folder: str  # top folder inside the zip


# The archives of Helber et al. as mirrored (unchanged) for TorchGeo; checksums as published there.
EUROSAT = {
    "ms": Archive(
        "https://hf.co/datasets/torchgeo/eurosat/resolve/1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSATallBands.zip",
        "EuroSATallBands.zip", "5ac12b3b2557aa56e1826e981e8e200e", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
    ),
    "rgb": Archive(
        "https://hf.co/datasets/torchgeo/eurosat/resolve/1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSAT.zip",
        "EuroSAT.zip", "c8fa014336c82ac7804f0398fcb19387", "2750",
    ),
}  # fmt: skip


def md5_file(path: Path) -> str:
    return file_digest(path, "md5")


def download_eurosat(
    dest: str | Path, variant: str = "ms", on_progress: Callable[[int, int], None] | None = None
) -> Path:
    """Fetch (or reuse) the archive, check its MD5, unpack; returns the class-folder root."""
    if variant not in EUROSAT:
        raise DataError(f"unknown EuroSAT variant {variant!r}; use 'ms' or 'rgb'")
    arc = EUROSAT[variant]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    zpath = dest / arc.filename
    if not zpath.is_file() or md5_file(zpath) != arc.md5:
        part = zpath.with_suffix(".part")
        try:
            with urllib.request.urlopen(arc.url, timeout=60) as resp, open(part, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise DataError(f"download of {arc.url} failed: {exc}; check the network and retry") from exc
        if md5_file(part) != arc.md5:
            part.unlink(missing_ok=True)
            raise DataError(f"{arc.filename}: checksum mismatch after download; retry, the file was damaged")
        part.replace(zpath)
    out_dir = dest / f"eurosat_{variant}"
    if not out_dir.is_dir():
        tmp = dest / f".eurosat_{variant}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        inner = tmp / arc.folder
        (inner if inner.is_dir() else tmp).rename(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
