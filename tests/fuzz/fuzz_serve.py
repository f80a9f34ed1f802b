"""Coverage-guided fuzzing (atheris) of the server's request decoders: the longer, opt-in run of
what tests/test_serve_fuzz.py checks with hypothesis. Not collected by pytest.

    pip install atheris
    PYTHONPATH=src python tests/fuzz/fuzz_serve.py -max_total_time=1800 [corpus_dir]

Each input is split into a target (OIP binary framing, OIP JSON, TF Serving JSON, multipart upload,
raw image decoder) and its bytes. A 5xx or an exception other than a domain error is a crash:
atheris stops and writes the input that caused it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest helpers

try:
    import atheris
except ImportError:  # pragma: no cover - opt-in tool
    sys.exit("atheris is not installed: pip install atheris (it needs a CPython with a wheel, or clang)")

with atheris.instrument_imports():
    from eodeploy.data.images import ImageLimits, decode_image
    from eodeploy.errors import EodeployError
    from eodeploy.web.app import create_app

from fastapi.testclient import TestClient  # noqa: E402

from conftest import fuzz_settings, make_repo, wait_ready  # noqa: E402

MAGIC = [b"II*\x00", b"MM\x00*", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x93NUMPY", b""]
client: Any = None


def _check(r: Any) -> None:
    if r.status_code >= 500:
        raise RuntimeError(f"server error {r.status_code}: {r.text}")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 4)
    if target == 0:  # OIP binary framing: header length and body
        n = fdp.ConsumeIntInRange(0, 600)
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        headers = {"Inference-Header-Content-Length": str(n)}
        _check(client.post("/v2/models/tiny/infer", content=body, headers=headers))
    elif target == 1:
        _check(client.post("/v2/models/tiny/infer", content=fdp.ConsumeBytes(fdp.remaining_bytes())))
    elif target == 2:
        _check(client.post("/v1/models/tiny:predict", content=fdp.ConsumeBytes(fdp.remaining_bytes())))
    elif target == 3:
        magic = MAGIC[fdp.ConsumeIntInRange(0, len(MAGIC) - 1)]
        content = magic + fdp.ConsumeBytes(fdp.remaining_bytes())
        _check(client.post("/predict?model=tiny", files={"image": ("f", content)}))
    else:
        magic = MAGIC[fdp.ConsumeIntInRange(0, len(MAGIC) - 1)]
        try:
            decode_image(
                magic + fdp.ConsumeBytes(fdp.remaining_bytes()), "fuzz", ImageLimits(max_pixels=512 * 512)
            )
        except EodeployError:
            pass


def main() -> None:
    global client
    repo = make_repo(Path(tempfile.mkdtemp(prefix="eodeploy-fuzz-")))
    cfg = fuzz_settings(repo.root)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        wait_ready(c)
        client = c
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
