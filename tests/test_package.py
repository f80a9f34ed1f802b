from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from conftest import BIAS, WEIGHTS, linear_onnx, linear_spec
from eodeploy.errors import ModelNotFoundError, PackageIntegrityError, PackageSpecError
from eodeploy.package import ModelPackage, ModelRepository, ModelSpec, mlm_errors, open_package, validate_item


def test_item_is_valid_stac_mlm(repo: ModelRepository) -> None:
    pkg = repo.get("tiny")
    assert mlm_errors(pkg.item) == []
    validate_item(pkg.item)
    props = pkg.properties
    assert props["mlm:input"][0]["bands"][:2] == ["B01", "B02"]
    assert props["mlm:input"][0]["input"]["dim_order"] == ["batch", "bands", "height", "width"]
    assert [c["name"] for c in props["mlm:output"][0]["classification:classes"]] == [
        "Forest",
        "River",
        "SeaLake",
    ]
    assert len(pkg.item["assets"]["model"]["eodeploy:sha256"]) == 64
    assert ModelSpec.from_item(pkg.item) == pkg.spec


def test_schema_catches_broken_item(repo: ModelRepository) -> None:
    item = json.loads(json.dumps(repo.get("tiny").item))
    del item["properties"]["mlm:input"]
    assert any("mlm:input" in e for e in mlm_errors(item))
    item = json.loads(json.dumps(repo.get("tiny").item))
    item["properties"]["mlm:tasks"] = ["not-a-task"]
    with pytest.raises(PackageSpecError, match="MLM schema"):
        validate_item(item)


def test_versions_list_get_remove(repo: ModelRepository) -> None:
    second = repo.add("tiny", linear_onnx(WEIGHTS, BIAS), linear_spec(), derived_from=("tiny", 1))
    assert second.version == 2
    assert repo.versions("tiny") == [1, 2]
    assert repo.names() == ["tiny"]
    assert repo.get("tiny").version == 2
    assert repo.get("tiny", "1").version == 1
    assert second.properties["eodeploy:derived_from"] == {"name": "tiny", "version": 1}
    assert any(link["rel"] == "derived_from" for link in second.item["links"])
    assert open_package("tiny:1", repo.root).version == 1
    repo.remove("tiny", 1)
    assert repo.versions("tiny") == [2]


def test_unknown_model_and_version(repo: ModelRepository) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'.*models there: tiny"):
        repo.get("nope")
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        repo.get("tiny", 7)
    with pytest.raises(ModelNotFoundError, match="not a number"):
        repo.get("tiny", "abc")


def test_bad_name_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageSpecError, match="not allowed"):
        ModelRepository(tmp_path).add("../evil", b"x", linear_spec())


def test_failed_write_leaves_nothing(repo: ModelRepository) -> None:
    def crash(folder: Path) -> None:
        assert (folder / "model.onnx").is_file()  # written, but not yet published
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        repo.add("tiny", linear_onnx(WEIGHTS, BIAS), linear_spec(), check=crash)
    assert repo.versions("tiny") == [1]
    assert [p.name for p in (repo.root / "tiny").iterdir()] == ["1"]  # no temporary left
    repo.get("tiny", 1).verify()  # the stored version is untouched


def test_concurrent_adds_get_distinct_versions(repo: ModelRepository) -> None:
    model = linear_onnx(WEIGHTS, BIAS)
    results: list[int] = []

    def add() -> None:
        results.append(repo.add("tiny", model, linear_spec()).version)

    threads = [threading.Thread(target=add) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [2, 3, 4, 5, 6, 7]
    assert repo.versions("tiny") == list(range(1, 8))


def test_hash_mismatch_detected(repo: ModelRepository) -> None:
    pkg = repo.get("tiny")
    pkg.verify()
    with open(pkg.model_path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(PackageIntegrityError, match="does not match its recorded sha256"):
        pkg.verify()


def test_update_properties_is_validated(repo: ModelRepository) -> None:
    pkg = repo.get("tiny")
    pkg.update_properties({"eodeploy:note": "checked"})
    assert ModelPackage(pkg.path).properties["eodeploy:note"] == "checked"
    with pytest.raises(PackageSpecError):
        pkg.update_properties({"mlm:tasks": "classification"})  # must be a list
    assert ModelPackage(pkg.path).properties["mlm:tasks"] == ["classification"]


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a model package"):
        ModelPackage(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "item.json").write_text("{not json")
    with pytest.raises(PackageSpecError, match="not valid JSON"):
        ModelPackage(tmp_path)


def test_spec_rejects_contradictions() -> None:
    with pytest.raises(PackageSpecError, match="value_scaling has 2 entries"):
        ModelSpec(name="x", bands=["B02", "B03", "B04"], height=64, width=64,
                  classes=linear_spec().classes, value_scaling=[{"type": "scale", "value": 1}] * 2)  # fmt: skip
    with pytest.raises(PackageSpecError, match="repeat"):
        ModelSpec(name="x", bands=["B02", "B02"], height=64, width=64, classes=linear_spec().classes)
