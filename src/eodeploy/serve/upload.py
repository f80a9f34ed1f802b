"""``POST /predict``: upload image files (GeoTIFF, PNG/JPEG, .npy), get classes back.

The guide's Flask example done properly: multipart field ``image`` (one file, as in the guide)
or ``files`` (several), model chosen by query parameters, errors as ``{"error": ...}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.responses import JSONResponse

from eodeploy.data.images import ImageLimits, decode_image
from eodeploy.errors import InvalidInputError, PayloadTooLargeError
from eodeploy.package.spec import UNITS
from eodeploy.serve.auth import require_inference

router = APIRouter(tags=["Upload"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            }
        },
    }
}


@router.post(
    "/predict",
    summary="Classify uploaded patches",
    openapi_extra=_UPLOAD_BODY,
)
async def predict_upload(
    request: Request,
    model: str | None = Query(None, description="model name (default: the server's default model)"),
    version: str | None = Query(None, description="model version (default: latest, or the canary split)"),
    label: str | None = Query(None, description="version label such as stable or canary"),
    top_k: int = Query(0, ge=0, le=100, description="also list the k most likely classes"),
    band_names: str | None = Query(
        None, description="comma-separated band names of the files (default: GeoTIFF band descriptions)"
    ),
    units: str = Query(
        "auto",
        description="what pixel values are: reflectance (0-1), dn (reflectance x 10000), rgb8 "
        "(8-bit true colour: PNG/JPEG) or auto (guessed from type and range)",
    ),
) -> JSONResponse:
    name = model or request.app.state.settings.default_model.split(":")[0]
    async with request.app.state.inference.track(name, "upload"):
        require_inference(request)  # inside: a refused key is counted like every 4xx
        return await _predict(request, name, version, label, top_k, band_names, units)


async def _predict(
    request: Request,
    name: str,
    version: str | None,
    label: str | None,
    top_k: int,
    band_names: str | None,
    units: str,
) -> JSONResponse:
    if units != "auto" and units not in UNITS:
        raise InvalidInputError(f"units must be one of auto, {', '.join(sorted(UNITS))}; got {units!r}")
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInputError(
            "send the image as multipart/form-data, e.g. curl -F image=@patch.tif http://HOST/predict"
        )
    try:
        form = await request.form(max_files=settings.max_request_patches + 1)
    except PayloadTooLargeError:
        raise
    except Exception as exc:  # python-multipart / starlette parse errors
        raise InvalidInputError(f"cannot read the multipart form ({exc})") from None
    try:
        return await _classify(request, form, name, version, label, top_k, band_names, units)
    finally:
        await form.close()  # the uploads' spooled temporary files


async def _classify(
    request: Request,
    form: FormData,
    name: str,
    version: str | None,
    label: str | None,
    top_k: int,
    band_names: str | None,
    units: str,
) -> JSONResponse:
    settings = request.app.state.settings
    uploads = [f for key in ("image", "files") for f in form.getlist(key) if isinstance(f, UploadFile)]
    if not uploads:
        raise InvalidInputError('no file uploaded; send it in the form field "image" (or several in "files")')
    if len(uploads) > settings.max_request_patches:
        raise PayloadTooLargeError(f"{len(uploads)} files exceed the limit of {settings.max_request_patches}")
    # Each header is checked against the model before any pixel is decoded, and decoding runs in
    # a worker thread, never on the event loop.
    spec = request.app.state.registry.resolve(name, version, label, request.headers.get("x-routing-key")).spec
    limits = ImageLimits(shape=(spec.height, spec.width))
    files = [(await f.read(), f.filename or "upload") for f in uploads]
    decoded = await run_in_threadpool(lambda: [decode_image(data, fname, limits) for data, fname in files])
    arrays = [arr for arr, _ in decoded]
    described = [tuple(names) if names else None for _, names in decoded]
    if band_names:
        bands: list[str] | None = [b.strip() for b in band_names.split(",")]
    else:  # GeoTIFF band descriptions, when every file names its bands alike
        bands = list(described[0]) if described[0] and len(set(described)) == 1 else None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InvalidInputError(f"uploaded files differ in shape {sorted(shapes)}; send patches of one size")
    result = await request.app.state.inference.infer(
        name,
        np.stack(arrays),
        protocol="upload",
        version=version,
        label=label,
        band_names=bands,
        units=units,
        routing_key=request.headers.get("x-routing-key"),
    )
    names = result.model.spec.class_names
    rows: list[dict[str, Any]] = []
    for f, p in zip(uploads, result.probabilities):
        i = int(p.argmax())
        row: dict[str, Any] = {
            "filename": f.filename,
            "class": names[i],
            "class_id": i,
            "confidence": round(float(p[i]), 6),
            "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)},
        }
        if top_k:
            order = np.argsort(-p)[:top_k]
            row["top_k"] = [{"class": names[j], "probability": round(float(p[j]), 6)} for j in order]
        rows.append(row)
    head = {"model": result.model.name, "version": result.model.version}
    if len(rows) == 1 and "image" in form:
        return JSONResponse({**head, **rows[0]})
    return JSONResponse({**head, "predictions": rows})
