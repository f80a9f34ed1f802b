"""API keys: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.requests import Request

from eodeploy.settings import Settings


def _presented(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


def key_is_valid(settings: Settings, presented: str | None) -> bool:
    if not settings.api_keys:
        return True
    if not presented:
        return False
    return any(
        hmac.compare_digest(presented.encode(), k.get_secret_value().encode()) for k in settings.api_keys
    )


def _check(request: Request, needed: bool) -> None:
    settings: Settings = request.app.state.settings
    if not needed or not settings.api_keys:
        return
    presented = _presented(request)
    if not key_is_valid(settings, presented):
        raise HTTPException(
            401,
            "missing API key: send it in the X-API-Key header" if not presented else "invalid API key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_admin(request: Request) -> None:
    """Repository and admin endpoints: always need a key once keys are configured."""
    _check(request, True)


def require_inference(request: Request) -> None:
    """Inference endpoints: need a key only with EODEPLOY_AUTH_INFERENCE=true."""
    _check(request, request.app.state.settings.auth_inference)
