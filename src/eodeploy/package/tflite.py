"""ONNX -> TensorFlow Lite (LiteRT) for the CNNs eodeploy trains and serves.

The maintained converters (onnx2tf, ai-edge-torch) pin TensorFlow, ONNX and NumPy versions that
clash with this stack, so this module translates the ONNX graph op by op into a ``tf.function``
(the ops CNN classifiers use) and lets TensorFlow's own converter write the ``.tflite``. Tensors
that are NCHW in ONNX are kept NHWC inside TensorFlow, the layout its CPU kernels need; the
model keeps the package's NCHW input, so every backend takes the same preprocessed tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eodeploy._lazy import lazy_import
from eodeploy.errors import EodeployError

SUPPORTED = (
    "Conv", "Relu", "Clip", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Add",
    "Mul", "Sub", "BatchNormalization", "Softmax", "ReduceMean", "Identity", "Dropout", "Constant",
)  # fmt: skip


class ExportError(EodeployError, ValueError):
    """A model the requested export format cannot represent."""


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def onnx_to_tflite(model_path: str | Path) -> bytes:
    onnx = lazy_import("onnx", "convert")
    from onnx import numpy_helper

    tf = lazy_import("tensorflow", "keras")
    model = onnx.load(str(model_path))
    graph = model.graph
    unsupported = sorted({n.op_type for n in graph.node} - set(SUPPORTED))
    if unsupported:
        raise ExportError(
            f"the TFLite exporter does not handle ONNX op(s) {', '.join(unsupported)}; it supports the ops of "
            "plain CNN classifiers. A model with test-time augmentation baked in (eodeploy train without --no-tta) "
            "uses Slice/Concat/Transpose: export a --no-tta version instead"
        )
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    inp = next(i for i in graph.input if i.name not in consts)
    dims = [d.dim_value if d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]

    def run(x: Any) -> Any:
        env: dict[str, Any] = {inp.name: tf.transpose(x, [0, 2, 3, 1]) if len(dims) == 4 else x}
        nhwc = {inp.name} if len(dims) == 4 else set()

        def get(name: str) -> Any:
            return env[name] if name in env else tf.constant(consts[name])

        for node in graph.node:
            op, a, ins, out = node.op_type, _attrs(node), list(node.input), node.output[0]
            x0 = get(ins[0]) if ins and op != "Constant" else None
            keep_layout = ins and ins[0] in nhwc
            if op == "Constant":
                continue
            if op == "Conv":
                if a.get("group", 1) != 1:
                    raise ExportError("grouped convolutions are not supported by the TFLite exporter")
                w = np.transpose(consts[ins[1]], (2, 3, 1, 0))  # OIHW -> HWIO
                t, l, b, r = a.get("pads") or [0, 0, 0, 0]  # noqa: E741
                y = tf.nn.conv2d(
                    tf.pad(x0, [[0, 0], [t, b], [l, r], [0, 0]]), w, strides=[1, *a.get("strides", [1, 1]), 1],
                    padding="VALID", dilations=[1, *a.get("dilations", [1, 1]), 1],
                )  # fmt: skip
                env[out] = y + consts[ins[2]] if len(ins) > 2 and ins[2] else y
            elif op == "Relu":
                env[out] = tf.nn.relu(x0)
            elif op == "Clip":
                lo = consts[ins[1]] if len(ins) > 1 and ins[1] else a.get("min", -np.inf)
                hi = consts[ins[2]] if len(ins) > 2 and ins[2] else a.get("max", np.inf)
                env[out] = tf.clip_by_value(x0, float(lo), float(hi))
            elif op == "MaxPool":
                t, l, b, r = a.get("pads") or [0, 0, 0, 0]  # noqa: E741
                xp = (
                    tf.pad(x0, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=-np.inf)
                    if t or l or b or r
                    else x0
                )
                env[out] = tf.nn.max_pool2d(
                    xp, a["kernel_shape"], a.get("strides", a["kernel_shape"]), "VALID"
                )
            elif op == "GlobalAveragePool":
                env[out] = tf.reduce_mean(x0, axis=[1, 2], keepdims=True)
            elif op == "ReduceMean":
                axes = list(consts[ins[1]]) if len(ins) > 1 else list(a["axes"])
                if keep_layout:
                    axes = [{0: 0, 1: 3, 2: 1, 3: 2}[int(ax) % 4] for ax in axes]
                env[out] = tf.reduce_mean(x0, axis=axes, keepdims=bool(a.get("keepdims", 1)))
                if keep_layout and a.get("keepdims", 1):
                    nhwc.add(out)
                continue
            elif op == "Flatten":
                xf = tf.transpose(x0, [0, 3, 1, 2]) if keep_layout else x0
                env[out] = tf.reshape(xf, [tf.shape(xf)[0], -1])
                continue
            elif op == "Gemm":
                bmat = get(ins[1])
                if a.get("transA", 0):
                    x0 = tf.transpose(x0)
                if a.get("transB", 0):
                    bmat = tf.transpose(bmat)
                y = a.get("alpha", 1.0) * tf.matmul(x0, bmat)
                env[out] = y + a.get("beta", 1.0) * get(ins[2]) if len(ins) > 2 and ins[2] else y
            elif op == "MatMul":
                env[out] = tf.matmul(x0, get(ins[1]))
            elif op in ("Add", "Mul", "Sub"):
                other = get(ins[1])
                if keep_layout and ins[1] in consts and consts[ins[1]].ndim >= 3:
                    c = consts[ins[1]]
                    other = tf.constant(np.moveaxis(c.reshape((1,) * (4 - c.ndim) + c.shape), 1, 3))
                env[out] = {"Add": tf.add, "Mul": tf.multiply, "Sub": tf.subtract}[op](x0, other)
            elif op == "BatchNormalization":
                scale, bias, mean, var = (consts[n] for n in ins[1:5])
                k = scale / np.sqrt(var + a.get("epsilon", 1e-5))
                env[out] = x0 * k + (bias - mean * k)
            elif op == "Softmax":
                axis = a.get("axis", -1)
                env[out] = tf.nn.softmax(x0, axis=3 if keep_layout and axis == 1 else axis)
            elif op in ("Identity", "Dropout"):
                env[out] = x0
            if keep_layout:
                nhwc.add(out)
        result = env[graph.output[0].name]
        return tf.transpose(result, [0, 3, 1, 2]) if graph.output[0].name in nhwc else result

    fn = tf.function(run, input_signature=[tf.TensorSpec(dims, tf.float32, name="input")], autograph=False)
    try:
        concrete = fn.get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
        return bytes(converter.convert())
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"TensorFlow could not convert {model_path} to TFLite: {exc}") from exc


#: Properties of the source that describe this version alone; the derived version gets its own.
_NOT_CARRIED = ("eodeploy:version", "eodeploy:derived_from", "eodeploy:evaluations", "eodeploy:tflite")


def export_tflite(package: Any, data_dir: str | Path | None = None) -> Any:
    """Publish ``model.onnx`` + ``model.tflite`` as the model's next version (published versions are
    never modified), once LiteRT agrees with ONNX Runtime on >= 99 % of the package's test patches
    (random patches when no data is given). A failed export writes nothing."""
    from eodeploy._files import file_digest
    from eodeploy.package.repository import ModelPackage, ModelRepository
    from eodeploy.runtime.backends import TFLITE_FILE
    from eodeploy.runtime.predictor import Predictor

    data = onnx_to_tflite(package.model_path)
    onnx_pred = Predictor(package)
    if data_dir is not None:
        from eodeploy.optimize.calibration import evaluation_set

        x = evaluation_set(onnx_pred, data_dir).images
    else:
        spec = package.spec
        x = np.random.default_rng(0).integers(100, 4000, (64, len(spec.bands), spec.height, spec.width))
    expected = onnx_pred.predict_proba(x)

    def check(folder: Path) -> None:
        """Runs on the unpublished folder: a model LiteRT disagrees with is never published."""
        candidate = ModelPackage(folder)
        got = Predictor(candidate, backend="litert").predict_proba(x)
        agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
        if agreement < 0.99:
            raise ExportError(
                f"LiteRT agrees with ONNX Runtime on only {agreement:.1%} of patches; nothing was written"
            )
        lite = folder / TFLITE_FILE
        record = {
            "file": TFLITE_FILE,
            "sha256": file_digest(lite),
            "size": lite.stat().st_size,
            "agreement_with_onnx": round(agreement, 4),
            "max_abs_diff": float(np.abs(expected - got).max()),
            "checked_on": "test split" if data_dir is not None else "random patches",
            "n": int(len(x)),
        }
        candidate.update_properties({"eodeploy:tflite": record})

    files = {TFLITE_FILE: data}
    for extra in ("split.json", "weights.pt"):  # the new version stays evaluable and prunable
        if (package.path / extra).is_file():
            files[extra] = (package.path / extra).read_bytes()
    props = {
        k: v for k, v in package.properties.items() if k.startswith("eodeploy:") and k not in _NOT_CARRIED
    }
    repo = ModelRepository(package.path.parent.parent)
    return repo.add(
        package.name, package.model_path, package.spec, props, files=files,
        derived_from=(package.name, package.version), check=check,
    )  # fmt: skip
