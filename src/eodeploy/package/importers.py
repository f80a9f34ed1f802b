"""Import models from Keras, TensorFlow, TFLite, ONNX and PyTorch as package versions.

Each importer converts to ONNX, then runs the source and the ONNX model on the same random
inputs; a version is written only if they agree within ``tolerance``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy._lazy import lazy_import
from eodeploy.data.eurosat import EUROSAT_CLASSES, EUROSAT_MS_BANDS, EUROSAT_RGB_BANDS
from eodeploy.errors import ImportModelError
from eodeploy.package.repository import ModelPackage, ModelRepository, sha256_file
from eodeploy.package.spec import ModelSpec, default_classes

TOLERANCE = 1e-4
SourceFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ImportOptions:
    classes: list[str] | None = None
    bands: list[str] | None = None
    module: str | None = None  # "pkg.mod:Class" for a PyTorch state dict
    module_kwargs: dict[str, Any] = field(default_factory=dict)
    value_scaling: list[dict[str, Any]] | None = None
    layout: str | None = None
    output_kind: str | None = None
    derived_from: tuple[str, int] | None = None
    tolerance: float = TOLERANCE
    opset: int = 17


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ImportModelError(f"{path}: a folder, but not a TensorFlow SavedModel (no saved_model.pb)")
    if not path.is_file():
        raise ImportModelError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    formats = {".onnx": "onnx", ".keras": "keras", ".h5": "keras", ".hdf5": "keras",
               ".tflite": "tflite", ".pt": "pytorch", ".pth": "pytorch", ".torchscript": "pytorch"}  # fmt: skip
    if suffix not in formats:
        raise ImportModelError(
            f"{path}: unknown model format {suffix!r}; give .keras, .h5, a SavedModel folder, "
            ".tflite, .onnx, or a PyTorch .pt/.pth"
        )
    return formats[suffix]


# --- converters: each returns (onnx bytes, source function, framework name) ------------------------
def _from_onnx(path: Path, opts: ImportOptions) -> tuple[bytes, SourceFn | None, str]:
    return path.read_bytes(), None, "ONNX"


def _from_pytorch(path: Path, opts: ImportOptions) -> tuple[bytes, SourceFn | None, str]:
    torch = lazy_import("torch", "train")
    if opts.module:
        mod_name, _, cls_name = opts.module.partition(":")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ImportModelError(f"--module {opts.module!r} cannot be imported: {exc}") from exc
        net = cls(**opts.module_kwargs)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            net.load_state_dict(state)
        except Exception as exc:
            raise ImportModelError(f"{path}: cannot load as a state dict for {opts.module}: {exc}") from exc
    else:
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ImportModelError(
                f"{path}: not a TorchScript file ({exc}); for a state dict pass --module "
                "'package.module:ClassName' so the network can be built"
            ) from exc
    net.eval()
    bands = opts.bands or []
    if not bands:
        raise ImportModelError(
            "PyTorch models carry no input shape: give --bands (and the patch size is 64x64 unless the model says otherwise)"
        )
    import io

    dummy = torch.zeros(1, len(bands), 64, 64)
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            net, (dummy,), buf, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=opts.opset, dynamo=False,
        )  # fmt: skip
    except Exception as exc:
        raise ImportModelError(f"PyTorch to ONNX export failed: {exc}") from exc

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(net(torch.from_numpy(x)).numpy())

    return buf.getvalue(), run, "PyTorch"


def _tf2onnx_cli(args: list[str], out: Path) -> bytes:
    lazy_import("tf2onnx", "keras")
    proc = subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", *args, "--output", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ImportModelError("tf2onnx could not convert the model: " + " | ".join(tail))
    return out.read_bytes()


def _from_keras(path: Path, opts: ImportOptions) -> tuple[bytes, SourceFn | None, str]:
    keras = lazy_import("keras", "keras")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ImportModelError(f"{path}: Keras cannot load it: {exc}") from exc
    try:
        shape = [1, *[d or 1 for d in model.inputs[0].shape[1:]]]
    except (AttributeError, IndexError, TypeError) as exc:
        raise ImportModelError(f"{path}: the Keras model declares no input shape") from exc
    model(np.zeros(shape, np.float32), training=False)  # the exporter needs a built, called model
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            # Keras 3's own exporter; tf2onnx.convert.from_keras fails on Keras 3.
            model.export(str(out), format="onnx", verbose=False)
        except Exception as exc:
            raise ImportModelError(f"Keras ONNX export failed: {exc}") from exc
        data = out.read_bytes()
    return data, lambda x: np.asarray(model(x, training=False)), "Keras"


def _from_savedmodel(path: Path, opts: ImportOptions) -> tuple[bytes, SourceFn | None, str]:
    tf = lazy_import("tensorflow", "keras")
    with tempfile.TemporaryDirectory() as tmp:
        data = _tf2onnx_cli(["--saved-model", str(path), "--opset", str(opts.opset)], Path(tmp) / "m.onnx")
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    in_name = list(fn.structured_input_signature[1].keys())[0]

    def run(x: np.ndarray) -> np.ndarray:
        out = fn(**{in_name: tf.constant(x)})
        return np.asarray(next(iter(out.values())))

    return data, run, "TensorFlow"


def _from_tflite(path: Path, opts: ImportOptions) -> tuple[bytes, SourceFn | None, str]:
    tf = lazy_import("tensorflow", "keras")
    with tempfile.TemporaryDirectory() as tmp:
        data = _tf2onnx_cli(["--tflite", str(path), "--opset", str(opts.opset)], Path(tmp) / "m.onnx")
    interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if np.dtype(inp["dtype"]) != np.float32:
        raise ImportModelError(
            f"{path}: a TFLite model with {np.dtype(inp['dtype'])} input; import the float model, "
            "then quantise with 'eodeploy optimize'"
        )

    def run(x: np.ndarray) -> np.ndarray:
        rows = []
        for i in range(len(x)):  # TFLite models are usually built for batch 1
            interp.set_tensor(inp["index"], x[i : i + 1])
            interp.invoke()
            rows.append(interp.get_tensor(out["index"]).copy())
        return np.concatenate(rows)

    return data, run, "TensorFlow"


CONVERTERS = {"onnx": _from_onnx, "pytorch": _from_pytorch, "keras": _from_keras,
              "savedmodel": _from_savedmodel, "tflite": _from_tflite}  # fmt: skip


# --- describing and checking the converted model ---------------------------------------------------
def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportModelError(f"ONNX Runtime cannot load the converted model: {exc}") from exc


def _dims(session: Any) -> list[Any]:
    shape = list(session.get_inputs()[0].shape)
    if len(shape) != 4:
        raise ImportModelError(
            f"model input has shape {shape}; eodeploy takes image patches (batch, bands, height, width) "
            "or (batch, height, width, bands)"
        )
    return shape


def _layout(shape: list[Any], opts: ImportOptions) -> str:
    if opts.layout:
        return opts.layout.upper()
    d1, d3 = shape[1], shape[3]
    n = len(opts.bands) if opts.bands else None
    if n is not None:
        if d1 == n:
            return "NCHW"
        if d3 == n:
            return "NHWC"
        raise ImportModelError(f"model input {shape} has no axis of {n} bands (from --bands)")
    return (
        "NHWC"
        if isinstance(d3, int) and isinstance(d1, int) and d3 < d1
        else ("NCHW" if isinstance(d1, int) else "NHWC")
    )


def _default_bands(n: int) -> list[str]:
    if n == len(EUROSAT_MS_BANDS):
        return list(EUROSAT_MS_BANDS)
    if n == 3:
        return list(EUROSAT_RGB_BANDS)
    raise ImportModelError(f"the model takes {n} bands; name them with --bands B02,B03,...")


def _fixed_batch(shape: list[Any]) -> int | None:
    return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None


def import_model(
    path: str | Path, name: str, repo: ModelRepository, opts: ImportOptions | None = None
) -> ModelPackage:
    opts = opts or ImportOptions()
    path = Path(path)
    fmt = detect_format(path)
    onnx_bytes, source, framework = CONVERTERS[fmt](path, opts)
    sess = _session(onnx_bytes)
    shape = _dims(sess)
    layout = _layout(shape, opts)
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if not all(isinstance(v, int) and v > 0 for v in (c, h, w)):
        raise ImportModelError(f"model input {shape} has no fixed band count and patch size")
    bands = opts.bands or _default_bands(c)
    if len(bands) != c:
        raise ImportModelError(f"--bands names {len(bands)} bands but the model takes {c}")

    batch = _fixed_batch(shape) or 4
    rng = np.random.default_rng(0)
    tensor_shape = (batch, c, h, w) if layout == "NCHW" else (batch, h, w, c)
    x = rng.standard_normal(tensor_shape).astype(np.float32)
    out_name = sess.get_outputs()[0].name
    onnx_out = np.asarray(sess.run([out_name], {sess.get_inputs()[0].name: x})[0], dtype=np.float32)
    onnx_out = onnx_out.reshape(batch, -1)
    n_out = onnx_out.shape[1]
    classes = opts.classes or (list(EUROSAT_CLASSES) if n_out == len(EUROSAT_CLASSES) else None)
    if classes is None:
        raise ImportModelError(f"the model has {n_out} outputs; name its classes with --classes A,B,...")
    if len(classes) != n_out:
        raise ImportModelError(f"--classes names {len(classes)} classes but the model has {n_out} outputs")
    max_diff = 0.0
    if source is not None:
        src_out = np.asarray(source(x), dtype=np.float32).reshape(batch, -1)
        max_diff = float(np.abs(src_out - onnx_out).max())
        if not max_diff <= opts.tolerance:
            raise ImportModelError(
                f"the ONNX conversion differs from the {framework} model by up to {max_diff:.3g} "
                f"(tolerance {opts.tolerance:g}); nothing was imported"
            )
    is_proba = bool(
        (onnx_out >= -1e-6).all() and (onnx_out <= 1 + 1e-6).all()
        and np.allclose(onnx_out.sum(axis=1), 1, atol=1e-3)
    )  # fmt: skip
    spec = ModelSpec(
        name=name, bands=bands, height=h, width=w, classes=default_classes(classes),
        value_scaling=opts.value_scaling or [], layout=layout,
        input_name=sess.get_inputs()[0].name, output_name=out_name,
        output_kind=opts.output_kind or ("probabilities" if is_proba else "logits"),
        architecture=f"imported {framework} model", framework=framework,
        description=f"imported from {path.name} ({fmt})",
    )  # fmt: skip
    props = {
        "eodeploy:conversion": {
            "source_format": fmt,
            "source_file": path.name,
            "source_sha256": sha256_file(path) if path.is_file() else None,
            "checked_samples": batch,
            "max_abs_diff": max_diff,
            "tolerance": opts.tolerance,
        },
        "eodeploy:fixed_batch_size": _fixed_batch(shape),
    }
    return repo.add(name, onnx_bytes, spec, props, derived_from=opts.derived_from)
