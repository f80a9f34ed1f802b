"""A versioned model repository: ``<root>/<name>/<version>/{model.onnx,item.json}``.

The same layout Triton and TF Serving use. Writes go to a hidden temporary folder that is
renamed into place, so a reader never sees a half-written version, whatever crashes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from eodeploy._files import atomic_write_bytes, file_digest
from eodeploy.errors import ModelNotFoundError, PackageIntegrityError, PackageSpecError
from eodeploy.package.item import build_item
from eodeploy.package.spec import ModelSpec
from eodeploy.package.validate import validate_item

MODEL_FILE = "model.onnx"
ITEM_FILE = "item.json"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,126}[A-Za-z0-9]$")  # as mlm:name, minus spaces


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


class ModelPackage:
    """One model version on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        item_path = self.path / ITEM_FILE
        if not item_path.is_file() or not (self.path / MODEL_FILE).is_file():
            raise ModelNotFoundError(
                f"{self.path} is not a model package (it needs {MODEL_FILE} and {ITEM_FILE}); "
                "create one with 'eodeploy import' or 'eodeploy train'"
            )
        try:
            self.item: dict[str, Any] = json.loads(item_path.read_text())
        except json.JSONDecodeError as exc:
            raise PackageSpecError(f"{item_path} is not valid JSON: {exc}") from exc

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def version(self) -> int:
        return int(self.item["properties"].get("eodeploy:version", self.path.name))

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @cached_property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_item(self.item)

    @property
    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = self.item["properties"]
        return props

    @property
    def recorded_sha256(self) -> str | None:
        return self.item.get("assets", {}).get("model", {}).get("eodeploy:sha256")

    def verify(self) -> None:
        """Check model.onnx against the sha256 recorded when the version was written."""
        recorded = self.recorded_sha256
        if not recorded:
            raise PackageIntegrityError(f"{self.path}/{ITEM_FILE} records no sha256 for the model")
        actual = sha256_file(self.model_path)
        if actual != recorded:
            raise PackageIntegrityError(
                f"{self.model_path} does not match its recorded sha256 "
                f"({actual[:12]}... != {recorded[:12]}...): the file was changed or damaged "
                "after the package was written; restore it or re-import the model"
            )

    def update_properties(self, updates: dict[str, Any]) -> None:
        """Merge ``updates`` into item.json properties, atomically."""
        item = json.loads(json.dumps(self.item))
        item["properties"].update(updates)
        validate_item(item)
        _write_json_atomic(self.path / ITEM_FILE, item)
        self.item = item

    def __repr__(self) -> str:
        return f"ModelPackage({self.name!r}, version={self.version}, path={str(self.path)!r})"


class ModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- reading --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.match(p.name) and self.versions(p.name)
        )

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not _NAME.match(name) or not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / ITEM_FILE).is_file()
        )  # fmt: skip

    def get(self, name: str, version: int | str | None = None) -> ModelPackage:
        """A version by number, or the latest when ``version`` is None or 'latest'."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(
                f"no model named {name!r} in repository {self.root} (models there: {known})"
            )
        if version is None or version == "latest":
            v = versions[-1]
        else:
            try:
                v = int(version)
            except ValueError:
                raise ModelNotFoundError(
                    f"version {version!r} of {name!r} is not a number or 'latest'"
                ) from None
            if v not in versions:
                raise ModelNotFoundError(
                    f"model {name!r} has no version {v} (versions: {', '.join(map(str, versions))})"
                )
        return ModelPackage(self.root / name / str(v))

    def __iter__(self) -> Iterator[ModelPackage]:
        for name in self.names():
            for v in self.versions(name):
                yield ModelPackage(self.root / name / str(v))

    # --- writing --------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        model: bytes | Path,
        spec: ModelSpec,
        properties: dict[str, Any] | None = None,
        files: dict[str, bytes] | None = None,
        derived_from: tuple[str, int] | None = None,
        version: int | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> ModelPackage:
        """Write a new version and return it; the version number is the next free one.

        ``check`` runs on the finished temporary folder before it is renamed into place: if it
        raises, nothing is added.
        """
        if not _NAME.match(name):
            raise PackageSpecError(
                f"model name {name!r} is not allowed; start with a letter, end with a letter or digit, and use letters, digits, '.', '_' and '-'"
            )
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".incoming-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            model_path = tmp / "model.onnx"
            if isinstance(model, Path):
                shutil.copyfile(model, model_path)
            else:
                model_path.write_bytes(model)
            extra_assets = {}
            for fname, data in (files or {}).items():
                (tmp / fname).write_bytes(data)
                key = Path(fname).stem
                if key == "model" or key in extra_assets:  # model.tflite beside model.onnx
                    key = fname.replace(".", "_")
                extra_assets[key] = {
                    "href": f"./{fname}",
                    "type": "application/json" if fname.endswith(".json") else "application/octet-stream",
                    "roles": ["metadata"],
                }
            digest, size = sha256_file(model_path), model_path.stat().st_size
            while True:
                v = version if version is not None else (max(self.versions(name), default=0) + 1)
                item = build_item(spec, name, v, digest, size, properties, derived_from, extra_assets)
                validate_item(item)
                _write_json_atomic(tmp / ITEM_FILE, item)
                for f in tmp.iterdir():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                if check is not None:
                    check(tmp)
                target = folder / str(v)
                try:
                    os.rename(tmp, target)  # atomic; fails if another writer took this number
                except OSError:
                    if version is not None or not target.exists():
                        raise
                    continue
                return ModelPackage(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove(self, name: str, version: int) -> None:
        self.get(name, version)  # raises a clear error when absent
        src = self.root / name / str(version)
        trash = self.root / name / f".removing-{version}-{uuid.uuid4().hex}"
        os.rename(src, trash)  # readers stop seeing it at once
        shutil.rmtree(trash)
        if not self.versions(name) and not any(
            p for p in (self.root / name).iterdir() if not p.name.startswith(".")
        ):
            shutil.rmtree(self.root / name, ignore_errors=True)


def open_package(ref: str | Path, repo: str | Path | None = None) -> ModelPackage:
    """A package from a version folder path, or from 'name', 'name:version' in ``repo``."""
    path = Path(ref)
    if path.is_dir():
        if (path / ITEM_FILE).is_file():
            return ModelPackage(path)
        versions = ModelRepository(path.parent).versions(path.name)
        if versions:
            return ModelRepository(path.parent).get(path.name)
        raise ModelNotFoundError(f"{path} holds no model package (no {ITEM_FILE})")
    if repo is None:
        raise ModelNotFoundError(f"{ref}: no such package folder")
    name, _, version = str(ref).partition(":")
    return ModelRepository(repo).get(name, version or None)
