"""One ONNX graph with the package's own preprocessing: raw band values in, probabilities out.

The browser (onnxruntime-web on the dashboard) and Triton run this graph instead of the bare
model, so neither needs a second normalisation code beside ``runtime.preprocess``: the
package's MLM ``value_scaling`` becomes graph ops, a channels-last (NHWC) network gets its
transpose, and a network that outputs logits gets its softmax.

- input ``raw_bands``: float32 (N, bands, H, W), the package's band order, values in the
  package's units (``spec.units``; no unit conversion happens in the graph). The batch axis is
  the model's own: dynamic, or fixed for a package with ``eodeploy:fixed_batch_size``.
- output ``probabilities``: float32 (N, classes) ((N, classes, H, W) for a dense model).

Every built graph is checked against the Python path (``check_fused``) before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from eodeploy._files import atomic_write_bytes
from eodeploy._lazy import lazy_import
from eodeploy.errors import EodeployError, PackageSpecError
from eodeploy.package.repository import ModelPackage
from eodeploy.package.spec import ModelSpec

if TYPE_CHECKING:
    import onnx

#: Names of the fused graph's input and output (the bare model's are prefixed with ``model/``).
RAW_INPUT = "raw_bands"
PROBABILITIES = "probabilities"
#: Largest max |Δp| allowed between the fused graph and the Python path.
TOLERANCE = 1e-5
#: Oldest ai.onnx opset whose Sub/Div/Max/Min broadcast (multidirectional broadcasting).
MIN_OPSET = 8
#: Typical raw value range per unit, for drawing check inputs when a package records no statistics.
UNIT_RANGES = {"reflectance": (0.0, 1.0), "dn": (0.0, 10000.0), "rgb8": (0.0, 255.0)}
_PREFIX = "model/"
#: Metadata key naming the edge between the preprocessing and the model (what ``check_fused`` probes).
MODEL_INPUT_KEY = "eodeploy:model_input"
#: Bumped when build_fused changes what it builds: files built by an older one are not used.
FORMAT = 1
log = logging.getLogger("eodeploy.package")


def _onnx() -> ModuleType:
    """The onnx package: building a graph needs it (the ``convert`` extra), serving a prebuilt one does not."""
    return lazy_import("onnx", "convert")


class FusedGraphError(EodeployError, ValueError):
    """A package whose preprocessing cannot be put into its ONNX graph, or whose fused graph
    disagrees with the Python preprocessing path."""


def _per_band(spec: ModelSpec) -> list[dict[str, Any]]:
    n = len(spec.bands)
    return spec.value_scaling * n if len(spec.value_scaling) == 1 else list(spec.value_scaling)


def scaling_constants(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The value scaling as per-band (1, bands, 1, 1) float32 constants applied in the order
    ``max(x, lower)``, ``min(., upper)``, ``. - shift``, ``. / divisor``.

    Each band has one step, so the others are exact identities for it (max with -inf, min with
    +inf, minus 0, divided by 1); the constants are rounded to float32 exactly as
    ``runtime.preprocess.scale_values`` rounds them (a min-max range is computed in float64
    first), so the graph gives the same bits. Only the ops some band needs are returned."""
    n = len(spec.bands)
    lower = np.full(n, -np.inf)
    upper = np.full(n, np.inf)
    shift = np.zeros(n)
    divisor = np.ones(n)
    for b, s in enumerate(_per_band(spec)):
        t = s["type"]
        try:
            if t == "z-score":
                shift[b], divisor[b] = s["mean"], s["stddev"]
            elif t == "min-max":
                shift[b], divisor[b] = s["minimum"], s["maximum"] - s["minimum"]
            elif t == "clip":
                lower[b], upper[b] = s["minimum"], s["maximum"]
            elif t == "clip-min":
                lower[b] = s["minimum"]
            elif t == "clip-max":
                upper[b] = s["maximum"]
            elif t == "offset":
                shift[b] = s["value"]
            elif t == "scale":
                divisor[b] = s["value"]
            else:  # ModelSpec rejects other types; a new one must be added here too
                raise FusedGraphError(f"value_scaling type {t!r} has no ONNX form")
        except (KeyError, TypeError) as exc:
            raise PackageSpecError(
                f"value_scaling entry {s} of model {spec.name!r} lacks or garbles {exc}"
            ) from exc
    out = {}
    for key, values, identity in (
        ("lower", lower, -np.inf),
        ("upper", upper, np.inf),
        ("shift", shift, 0.0),
        ("divisor", divisor, 1.0),
    ):
        if not (values == identity).all():
            out[key] = values.astype(np.float32).reshape(1, n, 1, 1)
    return out


def _opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise FusedGraphError("the model imports no ai.onnx opset")
    if versions[0] < MIN_OPSET:
        raise FusedGraphError(
            f"the model uses ai.onnx opset {versions[0]}; preprocessing can be fused into opset "
            f"{MIN_OPSET} or later only (re-export or convert the model with a newer opset)"
        )
    return versions[0]


def _dims(value_info: Any) -> list[int | str] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def build_fused(model: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """``model`` (the package's bare network) with ``spec``'s preprocessing before it and, for a
    logits output, a softmax after it. The model's own nodes and initializers are kept, their
    names prefixed with ``model/``; the ops used exist in the model's opset (8 or later)."""
    onnx_lib = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    _opset(model)
    fused = onnx_lib.compose.add_prefix(model, _PREFIX)
    g = fused.graph
    initializers = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    if len(inputs) != 1 or len(g.output) < 1:
        raise FusedGraphError(
            f"model {spec.name!r} has {len(inputs)} inputs and {len(g.output)} outputs; "
            "a fused graph needs one image input"
        )
    model_in, model_out = inputs[0], g.output[0]
    if model_in.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise FusedGraphError(f"model {spec.name!r} does not take float32 input")
    c, h, w = len(spec.bands), spec.height, spec.width
    in_dims = _dims(model_in)
    expected = spec.input_shape()
    if in_dims is None or len(in_dims) != 4:
        raise FusedGraphError(f"model {spec.name!r} input has shape {in_dims}, not 4 axes")
    for got, want in zip(in_dims[1:], expected[1:]):
        if isinstance(got, int) and got > 0 and got != want:
            raise FusedGraphError(
                f"model {spec.name!r} input has shape {in_dims} but item.json says "
                f"{spec.layout} {expected[1:]}"
            )
    batch = in_dims[0] if isinstance(in_dims[0], int) and in_dims[0] > 0 else "batch"

    pre: list[Any] = []
    consts = scaling_constants(spec)
    x = RAW_INPUT
    for key, op in (("lower", "Max"), ("upper", "Min"), ("shift", "Sub"), ("divisor", "Div")):
        if key in consts:
            g.initializer.append(numpy_helper.from_array(consts[key], f"pre/{key}"))
            pre.append(helper.make_node(op, [x, f"pre/{key}"], [f"pre/{key}_out"], name=f"pre/{op}"))
            x = f"pre/{key}_out"
    if spec.layout == "NHWC":
        pre.append(helper.make_node("Transpose", [x], ["pre/nhwc"], name="pre/Transpose", perm=[0, 2, 3, 1]))
        x = "pre/nhwc"
    # The last preprocessing op writes the model's input edge (an Identity when there is none).
    if pre:
        pre[-1].output[0] = model_in.name
    else:
        pre.append(helper.make_node("Identity", [x], [model_in.name], name="pre/Identity"))

    out_dims = _dims(model_out)
    rank = len(out_dims) if out_dims is not None else None
    post: list[Any] = []
    y = model_out.name
    if rank == 4:  # a dense model: one class distribution per pixel on axis 1
        if spec.output_kind == "logits":  # Softmax on the last axis means the same in every opset
            post += [
                helper.make_node("Transpose", [y], ["post/nhwc"], name="post/ToNHWC", perm=[0, 2, 3, 1]),
                helper.make_node("Softmax", ["post/nhwc"], ["post/softmax"], name="post/Softmax", axis=3),
                helper.make_node("Transpose", ["post/softmax"], [PROBABILITIES], name="post/ToNCHW", perm=[0, 3, 1, 2]),
            ]  # fmt: skip
        else:
            post.append(helper.make_node("Identity", [y], [PROBABILITIES], name="post/Identity"))
        assert out_dims is not None
        out_shape: list[int | str] = [batch, *out_dims[1:]]
    else:
        if rank != 2:  # (N, 1, 1, classes) and the like: one row per patch, as the predictor does
            post.append(helper.make_node("Flatten", [y], ["post/flat"], name="post/Flatten", axis=1))
            y = "post/flat"
        if spec.output_kind == "logits":
            post.append(helper.make_node("Softmax", [y], [PROBABILITIES], name="post/Softmax", axis=1))
        else:
            post.append(helper.make_node("Identity", [y], [PROBABILITIES], name="post/Identity"))
        out_shape = [batch, len(spec.classes)]

    nodes = [*pre, *g.node, *post]
    del g.node[:]
    g.node.extend(nodes)
    g.input.remove(model_in)
    g.input.insert(0, helper.make_tensor_value_info(RAW_INPUT, TensorProto.FLOAT, [batch, c, h, w]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, out_shape))
    g.name = f"{spec.name}-with-preprocessing"
    helper.set_model_props(
        fused,
        {
            **{p.key: p.value for p in model.metadata_props},
            "eodeploy:input": f"raw band values {spec.bands} in units {spec.units or 'as trained'}, NCHW",
            "eodeploy:value_scaling": json.dumps(spec.value_scaling),
            MODEL_INPUT_KEY: model_in.name,
            "eodeploy:output": "class probabilities"
            + (" (softmax added to the model's logits)" if spec.output_kind == "logits" else ""),
        },
    )
    try:
        onnx_lib.checker.check_model(fused)
    except onnx_lib.checker.ValidationError as exc:
        raise FusedGraphError(f"the fused graph of model {spec.name!r} is not valid ONNX: {exc}") from exc
    return fused


# --- checking against the Python path ----------------------------------------------------------------
def check_inputs(pkg: ModelPackage, n: int = 4, seed: int = 0) -> np.ndarray:
    """Deterministic raw patches (n, bands, H, W) in the package's units: drawn from its
    reference statistics (mean, std, clipped to the observed min-max) where it records them,
    else from a range that the band's scaling or the units make plausible."""
    spec = pkg.spec
    stats = (pkg.properties.get("eodeploy:reference_stats") or {}).get("bands") or {}
    rng = np.random.default_rng(seed)
    size = (n, spec.height, spec.width)
    out = np.empty((n, len(spec.bands), spec.height, spec.width), np.float32)
    steps = _per_band(spec) or [{}] * len(spec.bands)
    unit_lo, unit_hi = UNIT_RANGES.get(spec.units or "", (0.0, 10000.0))
    for b, (band, s) in enumerate(zip(spec.bands, steps)):
        st = stats.get(band) or {}
        if "mean" in st and "std" in st:
            v = rng.normal(st["mean"], st["std"], size)
            if "min" in st and "max" in st:
                v = np.clip(v, st["min"], st["max"])
        elif s.get("type") == "z-score":
            v = rng.normal(s["mean"], s["stddev"], size)
        elif s.get("type") in ("min-max", "clip"):  # past both ends, so clipping happens
            lo, hi = s["minimum"], s["maximum"]
            v = rng.uniform(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), size)
        else:  # units' range, widened to straddle a clip bound or offset
            lo, hi = unit_lo, unit_hi
            for key in ("minimum", "maximum", "value"):
                if key in s:
                    lo, hi = min(lo, s[key] - 0.1 * (hi - lo)), max(hi, s[key] + 0.1 * (hi - lo))
            v = rng.uniform(lo, hi, size)
        out[:, b] = v
    return out


def _run_fused(session: Any, x: np.ndarray, fixed: int | None) -> np.ndarray:
    if not fixed:
        return np.asarray(session.run([PROBABILITIES], {RAW_INPUT: x})[0], np.float32)
    parts = []
    for i in range(0, len(x), fixed):
        chunk = x[i : i + fixed]
        pad = np.zeros((fixed - len(chunk), *x.shape[1:]), np.float32)
        parts.append(session.run([PROBABILITIES], {RAW_INPUT: np.concatenate([chunk, pad])})[0][: len(chunk)])
    return np.concatenate(parts).astype(np.float32)


def fused_session(fused: onnx.ModelProto | bytes) -> Any:
    """An ONNX Runtime CPU session of a fused graph, optimised as a server or browser would."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    data = fused if isinstance(fused, bytes) else fused.SerializeToString()
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise FusedGraphError(f"ONNX Runtime cannot load the fused graph: {exc}") from exc


def _probe(fused: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy of ``fused`` that also outputs the preprocessed tensor (the model's input edge)."""
    from onnx import TensorProto, helper

    edge = next((p.value for p in fused.metadata_props if p.key == MODEL_INPUT_KEY), None)
    if edge is None:
        raise FusedGraphError(f"the graph records no {MODEL_INPUT_KEY}: it was not built by build_fused")
    probe = type(fused)()
    probe.CopyFrom(fused)
    probe.graph.output.append(helper.make_tensor_value_info(edge, TensorProto.FLOAT, None))
    return probe, edge


def check_fused(
    pkg: ModelPackage, fused: onnx.ModelProto | bytes, n: int = 4, x: np.ndarray | None = None
) -> float:
    """Run ``fused`` and the Python path (``Predictor``: preprocess, the bare model, softmax) on
    the same raw patches (``x``, else ``check_inputs(pkg, n)``); return max |Δp|, and raise
    ``FusedGraphError`` when it is above ``TOLERANCE``.

    The preprocessed tensor inside the graph is compared with ``runtime.preprocess`` too
    (relative 1e-6): a model whose outputs saturate (probabilities of exactly 0 and 1) would
    hide a wrong scaling from the probabilities alone."""
    onnx_lib = _onnx()

    from eodeploy.runtime.predictor import Predictor
    from eodeploy.runtime.preprocess import preprocess

    graph: onnx.ModelProto = onnx_lib.load_from_string(fused) if isinstance(fused, bytes) else fused
    if x is None:
        x = check_inputs(pkg, n)
    x = np.ascontiguousarray(x, dtype=np.float32)
    where = f"the fused graph of {pkg.name} v{pkg.version}"
    predictor = Predictor(pkg, providers=["CPUExecutionProvider"], verify=False)
    expected = predictor.predict_proba(x)
    got = _run_fused(fused_session(graph), x, predictor.fixed_batch)
    if got.shape != expected.shape:
        raise FusedGraphError(f"{where} outputs shape {got.shape}, the Python path {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:  # NaN fails too
        raise FusedGraphError(
            f"{where} disagrees with the Python preprocessing path: max |Δp| = {diff:.3g} over "
            f"{len(x)} patch(es) (tolerance {TOLERANCE:g}); its value_scaling, layout or output "
            "kind is not what the graph applies"
        )
    probe, edge = _probe(graph)
    fixed = predictor.fixed_batch
    rows = x[:fixed] if fixed and len(x) >= fixed else x
    if fixed and len(rows) < fixed:
        rows = np.concatenate([rows, np.zeros((fixed - len(rows), *x.shape[1:]), np.float32)])
    inside = fused_session(probe).run([edge], {RAW_INPUT: rows})[0]
    want = preprocess(rows, pkg.spec)
    if inside.shape != want.shape or not np.allclose(inside, want, rtol=1e-6, atol=1e-6):
        worst = float(np.abs(inside - want).max()) if inside.shape == want.shape else float("nan")
        raise FusedGraphError(
            f"{where} disagrees with the Python preprocessing path: the preprocessed tensor "
            f"{inside.shape} differs from runtime.preprocess's {want.shape} by up to {worst:.3g}; "
            "its value_scaling or layout is not what the graph applies"
        )
    return diff


# --- building, once per package version ---------------------------------------------------------------
def fused_model(pkg: ModelPackage, check: bool = True, verify: bool = True) -> onnx.ModelProto:
    """The package's fused graph, checked against the Python path on a few patches."""
    onnx_lib = _onnx()

    if verify:
        pkg.verify()
    fused = build_fused(onnx_lib.load(str(pkg.model_path)), pkg.spec)
    if check:
        check_fused(pkg, fused)
    return fused


def _cache_key(pkg: ModelPackage) -> tuple[str, int, str, str]:
    """(name, version, model sha256, digest of what the graph is built from in item.json)."""
    props = pkg.properties
    recipe = json.dumps(
        [props.get("mlm:input"), props.get("mlm:output"), props.get("eodeploy:output_kind")],
        sort_keys=True,
    )
    return pkg.name, pkg.version, pkg.recorded_sha256 or "", hashlib.sha256(recipe.encode()).hexdigest()


CACHE_SIZE = 8
_cache: OrderedDict[tuple[str, int, str, str], bytes] = OrderedDict()
_cache_lock = threading.Lock()
_build_lock = threading.Lock()


def fused_file(pkg: ModelPackage, directory: Path) -> Path:
    """Where ``eodeploy models fuse`` puts ``pkg``'s graph in ``directory``: named by everything it
    is built from (model sha256, the item's input/output description, this builder's FORMAT), so a
    changed package or builder never picks up a stale file."""
    name, version, sha, recipe = _cache_key(pkg)
    return Path(directory) / f"{name}-v{version}-{sha[:16] or 'unrecorded'}-{recipe[:16]}-f{FORMAT}.onnx"


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def write_fused(pkg: ModelPackage, directory: Path) -> Path:
    """Build and check ``pkg``'s fused graph and write it into ``directory`` (atomically)."""
    path = fused_file(pkg, directory)
    _store(path, fused_model(pkg).SerializeToString())
    return path


def _read_prebuilt(path: Path) -> bytes | None:
    """A prebuilt graph ONNX Runtime can load (what the browser will run), else None: a damaged
    or truncated file is built again (or refused, without onnx), never handed out."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        fused_session(data)
    except FusedGraphError as exc:
        log.warning("ignoring the prebuilt graph %s: %s", path, exc)
        return None
    return data


def fused_model_bytes(pkg: ModelPackage, directory: Path | None = None) -> bytes:
    """The serialised fused graph of ``pkg``, built and checked once per (name, version,
    sha256) and kept in a small LRU cache (what a server hands the browser).

    With ``directory`` (``EODEPLOY_FUSED_DIR``), a graph ``eodeploy models fuse`` wrote there is
    read instead of built (checked against the Python path when it was written; here only that
    ONNX Runtime loads it), and one built here is written
    there when the directory is writable. Building needs the ``convert`` extra."""
    key = _cache_key(pkg)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    with _build_lock:  # one build at a time: concurrent first requests wait for it
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        path = fused_file(pkg, directory) if directory is not None else None
        data = _read_prebuilt(path) if path is not None else None
        if data is None:
            data = fused_model(pkg).SerializeToString()
            if path is not None:
                try:
                    _store(path, data)
                except OSError as exc:  # a read-only directory: served from memory all the same
                    log.warning("could not keep the fused graph in %s: %s", path.parent, exc)
        with _cache_lock:
            _cache[key] = data
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return data


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
