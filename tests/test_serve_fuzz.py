"""Property-based tests (hypothesis) of every request decoder: OIP binary framing and JSON, TF
Serving JSON, multipart uploads, and the GeoTIFF/PNG/JPEG/.npy image decoders. Whatever the bytes,
the server answers a 2xx or a 4xx with ``{"error": ...}``: never a 5xx, never a crash.

A longer coverage-guided run of the same targets is ``tests/fuzz/fuzz_serve.py`` (atheris, opt-in).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import fuzz_settings, make_repo, require, wait_ready

hypothesis = require("hypothesis")
require("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from eodeploy.errors import EodeployError  # noqa: E402

#: EODEPLOY_FUZZ_EXAMPLES raises the examples per test for a longer run (CI: the default).
FUZZ = settings(
    max_examples=int(os.environ.get("EODEPLOY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATATYPES = ["BOOL", "UINT8", "UINT16", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "X"]
MAGIC = [b"II*\x00", b"MM\x00*", b"II+\x00", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x93NUMPY", b""]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from eodeploy.web.app import create_app

    repo = make_repo(tmp_path_factory.mktemp("fuzz"))
    cfg = fuzz_settings(repo.root)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def assert_answered(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"} and r.json()["error"], r.text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)
shapes = st.lists(st.integers(min_value=-2, max_value=70), min_size=0, max_size=5) | json_values


@st.composite
def oip_inputs(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "x"]) | json_values),
        "shape": draw(shapes),
        "datatype": draw(st.sampled_from(DATATYPES) | json_values),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(json_values)
    if draw(st.booleans()):
        tensor["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_size": st.integers(-5, 2**20) | json_values}) | json_values
        )
    doc: dict[str, Any] = {"inputs": draw(st.lists(st.just(tensor) | json_values, max_size=2))}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            json_values
            | st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["output", "class_id", "nope"]),
                        "parameters": st.fixed_dictionaries(
                            {"classification": json_values, "binary_data": json_values}
                        ),
                    }
                )
                | json_values,
                max_size=2,
            )
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.fixed_dictionaries(
                {"units": json_values, "band_names": json_values, "binary_data_output": json_values}
            )
        )
    return doc


@FUZZ
@given(
    doc=oip_inputs(),
    payload=st.binary(max_size=512),
    header=st.none() | st.text(max_size=6) | st.just("auto"),
)
def test_oip_binary_framing(client: Any, doc: dict[str, Any], payload: bytes, header: str | None) -> None:
    head = json.dumps(doc, default=str).encode()
    headers = {}
    if header == "auto":
        headers["Inference-Header-Content-Length"] = str(len(head))
    elif header is not None:
        headers["Inference-Header-Content-Length"] = header.encode("ascii", "replace").decode()
    r = client.post("/v2/models/tiny/infer", content=head + payload, headers=headers)
    assert_answered(r)


numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.none() | st.booleans()
params = json_values | st.text(max_size=4) | st.integers(-3, 5)


@FUZZ
@given(
    datatype=st.sampled_from(DATATYPES),
    values=st.lists(numbers, min_size=1, max_size=6),
    n=st.integers(0, 7),
)
def test_oip_json_numbers(client: Any, datatype: str, values: list[Any], n: int) -> None:
    """Small tensors of awkward numbers (beyond 64 bits, fractions for integer types, null)."""
    doc = {"inputs": [{"name": "input", "shape": [n], "datatype": datatype, "data": values}]}
    assert_answered(client.post("/v2/models/tiny/infer", content=json.dumps(doc).encode()))


@FUZZ
@given(
    outputs=params
    | st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["output", "class_id", "nope"])},
            optional={
                "parameters": st.fixed_dictionaries(
                    {}, optional={"classification": params, "binary_data": params}
                )
            },
        ),
        max_size=3,
    ),
    parameters=st.fixed_dictionaries(
        {}, optional={"units": params, "band_names": params, "binary_data_output": params}
    ),
    identifier=st.none() | params,
)
def test_oip_valid_tensor_awkward_outputs(
    client: Any, outputs: Any, parameters: Any, identifier: Any
) -> None:
    """A valid patch with random output requests and parameters: these are read after inference."""
    doc: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 13, 64, 64], "datatype": "UINT16", "data": [1000] * 53248}],
        "outputs": outputs,
        "parameters": parameters,
    }
    if identifier is not None:
        doc["id"] = identifier
    assert_answered(client.post("/v2/models/tiny/infer", content=json.dumps(doc).encode()))


@FUZZ
@given(body=st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v, default=str).encode()))
def test_oip_json_bytes(client: Any, body: bytes) -> None:
    assert_answered(client.post("/v2/models/tiny/infer", content=body))


@FUZZ
@given(
    doc=st.fixed_dictionaries(
        {"instances": json_values},
        optional={"signature_name": json_values, "parameters": json_values, "inputs": json_values},
    )
    | json_values,
    path=st.sampled_from(["/v1/models/tiny:predict", "/v1/models/tiny/versions/1:predict"]),
)
def test_tf_serving_json(client: Any, doc: Any, path: str) -> None:
    assert_answered(client.post(path, content=json.dumps(doc, default=str).encode()))


@FUZZ
@given(
    magic=st.sampled_from(MAGIC),
    tail=st.binary(max_size=300),
    field=st.sampled_from(["image", "files", "other"]),
    query=st.sampled_from(
        ["model=tiny", "model=tiny&units=dn", "model=tiny&band_names=B04", "model=nope", "top_k=3"]
    ),
)
def test_multipart_uploads(client: Any, magic: bytes, tail: bytes, field: str, query: str) -> None:
    r = client.post(f"/predict?{query}", files={field: ("f.bin", magic + tail)})
    assert_answered(r)


@FUZZ
@given(body=st.binary(max_size=400), boundary=st.sampled_from(["x", "", "----b"]))
def test_raw_multipart_bodies(client: Any, body: bytes, boundary: str) -> None:
    r = client.post(
        "/predict?model=tiny",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_answered(r)


# --- the image decoders, directly: a DataError (or 413's PayloadTooLargeError) or an array ----------
def _decodes_or_refuses(data: bytes) -> None:
    from eodeploy.data.images import ImageLimits, decode_image

    try:
        arr, _ = decode_image(data, "fuzz", ImageLimits(max_pixels=512 * 512))
    except EodeployError:
        return
    assert arr.ndim == 3


@FUZZ
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=600))
def test_decoders_on_random_bytes(magic: bytes, tail: bytes) -> None:
    _decodes_or_refuses(magic + tail)


@FUZZ
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
    dtype=st.sampled_from(["<u2", ">u2", "<f4", "<c8", "|b1", "<U3", "<M8[s]", "|V4"]),
    cut=st.integers(0, 64),
)
def test_npy_decoder(shape: list[int], dtype: str, cut: int) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype))
    data = buf.getvalue()
    _decodes_or_refuses(data[: len(data) - cut] if cut else data)


@FUZZ
@given(
    size=st.tuples(st.integers(1, 80), st.integers(1, 80)),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "CMYK"]),
    fmt=st.sampled_from(["PNG", "JPEG"]),
    flip=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_picture_decoder(size: tuple[int, int], mode: str, fmt: str, flip: list[int]) -> None:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.new(mode, size)
    try:
        img.save(buf, format=fmt)
    except OSError:  # a mode the format cannot hold
        return
    data = bytearray(buf.getvalue())
    for i in flip:  # damage a few bytes
        data[i % len(data)] ^= 0x5A
    _decodes_or_refuses(bytes(data))


@FUZZ
@given(
    bands=st.integers(1, 20),
    size=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32", "float64", "complex64"]),
    flip=st.lists(st.integers(0, 100_000), max_size=4),
    compress=st.sampled_from([None, "deflate", "lzw"]),
)
def test_geotiff_decoder(
    tmp_path_factory: pytest.TempPathFactory,
    bands: int,
    size: tuple[int, int],
    dtype: str,
    flip: list[int],
    compress: str | None,
) -> None:
    import rasterio

    path: Path = tmp_path_factory.mktemp("tif") / "f.tif"
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": size[1],
        "height": size[0],
        "count": bands,
        "dtype": dtype,
    }
    if compress:
        profile["compress"] = compress
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.ones((bands, *size), dtype))
    data = bytearray(path.read_bytes())
    for i in flip:
        data[i % len(data)] ^= 0x5A
    _decodes_or_refuses(bytes(data))


# --- gRPC: ModelInfer messages, against a real server process ------------------------------------
@pytest.fixture(scope="module")
def grpc_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    grpc = require("grpc")
    from tritonclient.grpc import service_pb2_grpc

    from servers import live_server

    root = tmp_path_factory.mktemp("grpc-fuzz")
    repo = make_repo(root)
    with live_server(repo.root, root / "server.log", EODEPLOY_MAX_BODY_MIB="1") as srv:
        with grpc.insecure_channel(srv.grpc) as channel:
            yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@FUZZ
@given(
    datatype=st.sampled_from([*DATATYPES, ""]),
    shape=st.lists(st.integers(-3, 70), max_size=5),
    raw=st.none() | st.binary(max_size=300),
    ints=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    floats=st.lists(st.floats(width=32), max_size=8),
    name=st.sampled_from(["input", "x", ""]),
    model=st.sampled_from(["tiny", "nope", ""]),
    version=st.sampled_from(["", "1", "7", "x"]),
    output=st.none() | st.sampled_from(["output", "class_id", "nope"]),
    classification=st.none() | st.text(max_size=3) | st.integers(-2, 5),
    units=st.none() | st.text(max_size=6),
    valid=st.booleans(),
)
def test_grpc_model_infer(grpc_stub: Any, **kw: Any) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    if kw["valid"]:  # a valid patch, so that the output parameters are read too
        kw.update(model="tiny", version="", name="input", datatype="UINT16", shape=[1, 13, 64, 64])
        kw["raw"] = bytes(2 * 53248)
    req = pb.ModelInferRequest(model_name=kw["model"], model_version=kw["version"])
    tensor = req.inputs.add(name=kw["name"], datatype=kw["datatype"], shape=kw["shape"])
    if kw["raw"] is not None:
        req.raw_input_contents.append(kw["raw"])
    else:
        tensor.contents.int_contents.extend(kw["ints"])
        tensor.contents.uint_contents.extend(abs(i) for i in kw["ints"])
        tensor.contents.fp32_contents.extend(kw["floats"])
    if kw["output"] is not None:
        out = req.outputs.add(name=kw["output"])
        c = kw["classification"]
        if isinstance(c, str):
            out.parameters["classification"].string_param = c
        elif c is not None:
            out.parameters["classification"].int64_param = c
    if kw["units"] is not None:
        req.parameters["units"].string_param = kw["units"]
    try:
        grpc_stub.ModelInfer(req, timeout=30)
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), err.details()
        assert err.details()
