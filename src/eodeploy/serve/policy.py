"""Per-model serving configuration: version policy, labels and canary share (``serving.json``).

``<repo>/<name>/serving.json`` plays the part of Triton's ``config.pbtxt`` and TF Serving's model
config: it is optional, re-read on every repository scan, and written atomically by
``eodeploy models route``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from eodeploy._files import atomic_write_bytes
from eodeploy.errors import PackageSpecError

SERVING_FILE = "serving.json"
_EXAMPLE = '{"version_policy": "latest:1", "labels": {"stable": 1, "canary": 2}, "canary_percent": 10}'
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+$")]  # TF Serving's label rule


class _ServingFile(BaseModel):
    """The schema of serving.json. Unknown fields are refused: a misspelt field would otherwise be
    silently ignored and route traffic the wrong way."""

    model_config = ConfigDict(extra="forbid")

    version_policy: str | dict[str, Any] | None = None
    labels: dict[Label, Annotated[int, Field(strict=True, ge=0)]] = Field(default_factory=dict)
    canary_percent: float = Field(0.0, ge=0, le=100, allow_inf_nan=False)


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, value: str | dict[str, Any]) -> VersionPolicy:
        """``"latest:2"``, ``"all"``, ``"specific:1,3"`` or Triton's JSON form."""
        try:
            if isinstance(value, dict):
                if "latest" in value:
                    return cls("latest", int(value["latest"].get("num_versions", 1)))
                if "all" in value:
                    return cls("all")
                if "specific" in value:
                    return cls("specific", versions=tuple(int(v) for v in value["specific"]["versions"]))
                raise ValueError(value)
            kind, _, arg = value.strip().partition(":")
            if kind == "latest":
                return cls("latest", int(arg or 1))
            if kind == "all":
                return cls("all")
            if kind == "specific":
                return cls("specific", versions=tuple(int(v) for v in arg.split(",") if v.strip()))
            raise ValueError(value)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise PackageSpecError(
                f"version policy {value!r} is not understood; use 'latest:N', 'all' or 'specific:1,3'"
            ) from None

    def select(self, available: list[int]) -> list[int]:
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return sorted(available)[-max(self.num_versions, 1) :]

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


@dataclass
class ServingConfig:
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)
    #: Share (0-100) of requests that name no version or label that go to the ``canary`` label;
    #: the rest go to ``stable`` (or the latest version when there is no ``stable`` label).
    canary_percent: float = 0.0

    def wanted(self, available: list[int]) -> list[int]:
        """Versions to load: the policy's, plus every labelled version that exists."""
        chosen = set(self.policy.select(available))
        chosen.update(v for v in self.labels.values() if v in available)
        return sorted(chosen)

    @classmethod
    def read(cls, model_dir: Path, default_policy: VersionPolicy) -> ServingConfig:
        path = model_dir / SERVING_FILE
        if not path.is_file():
            return cls(default_policy)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PackageSpecError(f"{path}: not valid JSON ({exc}); fix or delete it") from exc
        return cls.from_dict(data, default_policy, str(path))

    @classmethod
    def from_dict(cls, data: Any, default_policy: VersionPolicy, where: str = "") -> ServingConfig:
        """Validate a parsed serving.json against its schema; every problem names the file and field."""
        try:
            doc = _ServingFile.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'the whole file'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise PackageSpecError(
                f"{where}: {problems}. Expected an object such as {_EXAMPLE}; "
                "fix the file or rewrite it with 'eodeploy models route'"
            ) from None
        try:
            policy = (
                VersionPolicy.parse(doc.version_policy) if doc.version_policy is not None else default_policy
            )
        except PackageSpecError as exc:
            raise PackageSpecError(f"{where}: version_policy: {exc}") from None
        if doc.canary_percent and "canary" not in doc.labels:
            raise PackageSpecError(f"{where}: canary_percent is set but no 'canary' label names a version")
        return cls(policy, dict(doc.labels), doc.canary_percent)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version_policy": str(self.policy), "labels": self.labels}
        if self.canary_percent:
            out["canary_percent"] = self.canary_percent
        return out

    def write(self, model_dir: Path) -> None:
        atomic_write_bytes(model_dir / SERVING_FILE, json.dumps(self.to_dict(), indent=2).encode())
