"""Request-body schemas for the OpenAPI document only.

The inference handlers parse the raw body themselves (orjson, off the event loop when large) and
answer 400 with a clear message for anything wrong; these pydantic models are never used to
validate a request. They describe what the decoders accept, so that clients, docs and schemathesis
see real schemas instead of ``object``. Keep them in step with ``tensors``/``oip``/``tfserving``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from eodeploy.serve.tensors import INPUT_DATATYPES

Units = Literal["auto", "dn", "reflectance", "rgb8"]
Datatype = Literal[tuple(INPUT_DATATYPES)]  # type: ignore[valid-type]

# Nested lists of numbers (a tensor in row-major nesting) or a flat list.
_NUMBERS: dict[str, Any] = {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array"}]}}
# TF Serving rows: patches, or objects naming the input ({"input": patch}).
_ROWS: dict[str, Any] = {"type": "array", "items": {"anyOf": [{"type": "array"}, {"type": "object"}]}}


class BandParameters(BaseModel):
    """Our extension, in the request's ``parameters`` (OIP) or ``parameters`` (TF Serving)."""

    model_config = ConfigDict(extra="allow")
    band_names: str | None = Field(
        default=None,
        description="comma-separated band names when not in the model's order, e.g. 'B04,B03,B02'",
    )
    units: Units = Field(
        default="auto",
        description="reflectance (0-1), dn (reflectance x 10000), rgb8 (8-bit true colour) or auto",
    )
    binary_data_output: bool | None = Field(default=None, description="all outputs as binary tensors")


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: int | None = Field(
        default=None, ge=0, description="bytes of this tensor after the JSON header (binary extension)"
    )


class InputTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(description="the model's input name (see model metadata)")
    shape: list[int] = Field(description="[batch, bands, height, width]")
    datatype: Datatype = Field(description="element type of data")  # type: ignore[valid-type]
    data: list[Any] | SkipJsonSchema[None] = Field(  # no null: absent, not null, when the tensor is binary
        default=None,
        description="values, flat or nested, row-major; absent when binary_data_size is given",
        json_schema_extra=_NUMBERS,
    )
    parameters: InputParameters | None = None


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    classification: int | None = Field(default=None, ge=1, description="top-k class names (Triton extension)")
    binary_data: bool | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(description="output name: probabilities or class_id (see model metadata)")
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    """Open Inference Protocol v2 inference request (JSON form; the model takes one input)."""

    model_config = ConfigDict(extra="allow")
    id: str | None = Field(default=None, description="echoed in the response")
    parameters: BandParameters | None = None
    inputs: list[InputTensor] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None


class PredictRequest(BaseModel):
    """TensorFlow Serving predict request: exactly one of instances (row) or inputs (columnar)."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}]}
    )
    signature_name: Literal["serving_default"] = "serving_default"
    instances: list[Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="patches [bands, height, width] each, or objects {input_name: patch}",
        json_schema_extra=_ROWS,
    )
    inputs: list[Any] | dict[str, Any] | SkipJsonSchema[None] = Field(
        default=None, description="a batch [n, bands, height, width], or {input_name: batch}"
    )
    parameters: BandParameters | None = None


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool | None = Field(default=None, description="only models that are ready")


class RepositoryModelRequest(BaseModel):
    """Load/unload body (optional; accepted and ignored, as Triton's parameters are)."""

    model_config = ConfigDict(extra="allow")
    parameters: dict[str, Any] | None = None


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined (openapi_extra has no components)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            # A field that may be absent but not null shows pydantic's "default": null: drop it.
            return {k: walk(v) for k, v in node.items() if not (k == "default" and v is None)}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _inline(model.model_json_schema())


def json_body(
    model: type[BaseModel], *, required: bool = True, other_content: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body the handler parses itself."""
    content: dict[str, Any] = {"application/json": {"schema": body_schema(model)}, **(other_content or {})}
    return {"requestBody": {"required": required, "content": content}}
