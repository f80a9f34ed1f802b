"""A static site for browser tests, run by uvicorn in its own process (tests/browser.py
``static_site``): the test pages in $EODEPLOY_TEST_SITE at / and the vendored front-end files at
/static/vendor/, with the content types the dashboard registers (.wasm, .mjs)."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from eodeploy.web.assets import VENDOR_DIR, register_mimetypes


def create_app() -> Starlette:
    register_mimetypes()
    root = Path(os.environ["EODEPLOY_TEST_SITE"])
    return Starlette(
        routes=[
            Mount("/static/vendor", StaticFiles(directory=VENDOR_DIR), name="vendor"),
            Mount("/", StaticFiles(directory=root, html=True), name="site"),
        ]
    )
