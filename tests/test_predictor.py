from __future__ import annotations

import numpy as np
import pytest

from conftest import BIAS, CLASSES, WEIGHTS, linear_onnx, linear_spec, reference_proba
from eodeploy.data.eurosat import EUROSAT_MS_BANDS
from eodeploy.errors import EodeployError, InvalidInputError, PackageIntegrityError
from eodeploy.package import ModelRepository
from eodeploy.runtime import Predictor, choose_providers, preprocess


@pytest.fixture
def raw() -> np.ndarray:
    return np.random.default_rng(1).integers(1, 4000, (5, 13, 64, 64)).astype(np.uint16)


def test_predicts_what_numpy_computes(repo: ModelRepository, raw: np.ndarray) -> None:
    p = Predictor(repo.get("tiny"))
    out = p.predict(raw, batch_size=2)
    np.testing.assert_allclose(out.probabilities, reference_proba(raw), atol=1e-5)
    assert out.class_ids.tolist() == reference_proba(raw).argmax(1).tolist()
    assert out.class_names == [CLASSES[i] for i in out.class_ids]
    assert out.confidence.shape == (5,)


def test_single_patch_and_band_reordering(repo: ModelRepository, raw: np.ndarray) -> None:
    p = Predictor(repo.get("tiny"))
    # Bands in another order plus an extra band: matched by name.
    order = list(reversed(EUROSAT_MS_BANDS)) + ["SCL"]
    shuffled = np.concatenate([raw[:, ::-1], np.zeros((5, 1, 64, 64), raw.dtype)], axis=1)
    np.testing.assert_allclose(p.predict_proba(shuffled, band_names=order), reference_proba(raw), atol=1e-5)
    np.testing.assert_allclose(p.predict_proba(raw[0]), reference_proba(raw[:1]), atol=1e-5)


def test_nhwc_model_takes_the_same_raw_input(tmp_path, raw: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    repo = ModelRepository(tmp_path)
    pkg = repo.add("nhwc", linear_onnx(WEIGHTS, BIAS, layout="NHWC"), linear_spec("nhwc", layout="NHWC"))
    assert pkg.properties["mlm:input"][0]["input"]["dim_order"][-1] == "bands"
    assert preprocess(raw, pkg.spec).shape == (5, 64, 64, 13)
    np.testing.assert_allclose(Predictor(pkg).predict_proba(raw), reference_proba(raw), atol=1e-5)


def test_logits_are_softmaxed(tmp_path, raw: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    repo = ModelRepository(tmp_path)
    pkg = repo.add(
        "logit", linear_onnx(WEIGHTS, BIAS, softmax=False), linear_spec("logit", output_kind="logits")
    )
    np.testing.assert_allclose(Predictor(pkg).predict_proba(raw), reference_proba(raw), atol=1e-5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: r[:, :12], "12 bands but model 'tiny' expects 13"),
        (lambda r: r[:, :, :32, :32], "patch size 32x32 does not match"),
        (lambda r: np.where(np.arange(64) == 3, np.nan, r.astype(np.float32)), "NaN or infinite"),
        (lambda r: r[0, 0], "expected patches shaped"),
        (lambda r: r[:0], "empty batch"),
        (lambda r: r.astype(str), "must be numbers"),
    ],
)
def test_bad_input_is_named(repo: ModelRepository, raw: np.ndarray, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=message):
        Predictor(repo.get("tiny")).predict(make(raw))


def test_missing_band_is_named(repo: ModelRepository, raw: np.ndarray) -> None:
    names = [b if b != "B8A" else "B8" for b in EUROSAT_MS_BANDS]
    with pytest.raises(InvalidInputError, match="lacks band\\(s\\) B8A"):
        Predictor(repo.get("tiny")).predict(raw, band_names=names)


def test_tampered_model_refused(repo: ModelRepository) -> None:
    pkg = repo.get("tiny")
    pkg.model_path.write_bytes(b"not onnx")
    with pytest.raises(PackageIntegrityError, match="sha256"):
        Predictor(pkg)
    with pytest.raises(PackageIntegrityError, match="ONNX Runtime cannot load"):
        Predictor(pkg, verify=False)


def test_providers_and_threads(repo: ModelRepository) -> None:
    assert choose_providers()[-1] == "CPUExecutionProvider"
    p = Predictor(repo.get("tiny"), intra_op_threads=1, inter_op_threads=1)
    assert p.thread_settings == {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    assert p.describe()["providers"][-1] == "CPUExecutionProvider"
    with pytest.raises(EodeployError, match="not available"):
        Predictor(repo.get("tiny"), providers=["NoSuchExecutionProvider"])
