"""The dashboard's front-end files, vendored from the npm registry at exact versions.

``ASSETS`` says what is wanted: each package, its exact version and the files to take.
``assets.lock.json`` records what that resolved to: the tarball's address on the registry, the
registry's sha512 ``integrity`` for it, and the sha256 and size of every file taken. The lockfile is
written by ``python -m eodeploy.web.assets --lock`` from ``ASSETS`` and the registry's metadata,
never by hand. The install step (``python -m eodeploy.web.assets``) downloads each tarball from the
registry, checks it against the lock and places the listed files under ``static/vendor/<package>/``
(gitignored; in the wheel): pages load them from our own server, never from a CDN, so the dashboard
works offline and a compromised CDN cannot change what runs in it.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import io
import json
import logging
import mimetypes
import re
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import quote

from eodeploy._files import atomic_write_bytes, file_digest
from eodeploy.errors import EodeployError

REGISTRY = "https://registry.npmjs.org/"
LOCK_PATH = Path(__file__).with_name("assets.lock.json")
VENDOR_DIR = Path(__file__).parent / "static" / "vendor"
FETCH_COMMAND = "python -m eodeploy.web.assets"
LOCK_COMMAND = "python -m eodeploy.web.assets --lock"
#: Largest tarball downloaded (onnxruntime-web 1.30.0 is 33 MB).
MAX_TARBALL_BYTES = 256 * 2**20
TIMEOUT_S = (15, 120)  # connect, read

Purpose = Literal["dashboard", "tests"]


@dataclass(frozen=True)
class Wanted:
    """A package to vendor. ``files`` pairs a path inside the tarball's top folder with its
    destination under ``vendor/<name>/``; a path with ``*`` is a pattern (one folder level) and its
    destination a folder."""

    name: str
    version: str
    purpose: Purpose
    files: tuple[tuple[str, str], ...]
    license_file: str | None = "LICENSE"


ASSETS: tuple[Wanted, ...] = (
    Wanted(
        "leaflet", "1.9.4", "dashboard",
        (("dist/leaflet.js", "leaflet.js"), ("dist/leaflet.css", "leaflet.css"), ("dist/images/*.png", "images/")),
    ),
    Wanted("uplot", "1.6.32", "dashboard", (("dist/uPlot.iife.min.js", "uPlot.iife.min.js"), ("dist/uPlot.min.css", "uPlot.min.css"))),
    Wanted("htmx.org", "4.0.1", "dashboard", (("dist/htmx.min.js", "htmx.min.js"),)),
    # The CPU (WebAssembly) build only: ort.wasm.min.js imports the .mjs glue, which loads the .wasm.
    # The tarball holds no LICENSE file: the package is MIT and ort.wasm.min.js keeps its header.
    Wanted(
        "onnxruntime-web", "1.30.0", "dashboard",
        (
            ("dist/ort.wasm.min.js", "ort.wasm.min.js"),
            ("dist/ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.wasm"),
            ("dist/ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.mjs"),
        ),
        license_file=None,
    ),
    # Accessibility checks in the browser tests (tests/browser.py); no page loads it.
    Wanted("axe-core", "4.14.1", "tests", (("axe.min.js", "axe.min.js"),)),
)  # fmt: skip


class AssetLockError(EodeployError, ValueError):
    """A lockfile that cannot be read, contradicts itself or lags behind ``ASSETS``."""


class AssetFetchError(EodeployError, ConnectionError):
    """The registry could not be reached or did not serve the file."""


class AssetIntegrityError(EodeployError, ValueError):
    """Bytes from the registry that differ from what the lockfile records."""


@dataclass(frozen=True)
class LockedFile:
    source: str  # path inside the tarball, e.g. package/dist/leaflet.js
    dest: str  # path under the vendor folder, e.g. leaflet/leaflet.js
    sha256: str
    size: int


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    purpose: Purpose
    license: str
    tarball: str
    integrity: str
    files: tuple[LockedFile, ...]

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


# --- The lockfile --------------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _lock_error(path: Path, what: str) -> AssetLockError:
    return AssetLockError(
        f"lockfile {path}: {what}; restore it from git, or rewrite it from the registry with: {LOCK_COMMAND}"
    )


def _check_dest(path: Path, name: str, dest: str) -> None:
    p = PurePosixPath(dest)
    if (
        p.is_absolute()
        or ".." in p.parts
        or "\\" in dest
        or p.parts[: len(name.split("/"))] != tuple(name.split("/"))
    ):
        raise _lock_error(path, f"{name}: destination {dest!r} is not a plain path under {name}/")


def load_lock(path: Path = LOCK_PATH) -> tuple[LockedPackage, ...]:
    """The lockfile's packages, each field checked: a tampered or truncated lock is an error, not a
    download from somewhere else or a file written outside the vendor folder."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _lock_error(path, "not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _lock_error(path, f"unreadable ({exc})") from exc
    packages: list[LockedPackage] = []
    try:
        for entry in doc["packages"]:
            name = str(entry["name"])
            if not str(entry["tarball"]).startswith(REGISTRY):
                raise _lock_error(path, f"{name}: tarball {entry['tarball']!r} is not on {REGISTRY}")
            if not str(entry["integrity"]).startswith("sha512-"):
                raise _lock_error(path, f"{name}: integrity must be a sha512 digest")
            if entry["purpose"] not in ("dashboard", "tests"):
                raise _lock_error(path, f"{name}: purpose {entry['purpose']!r} is not 'dashboard' or 'tests'")
            files = []
            for f in entry["files"]:
                _check_dest(path, name, str(f["to"]))
                if not _SHA256.fullmatch(str(f["sha256"])):
                    raise _lock_error(path, f"{name}: {f['to']}: sha256 is not 64 hex digits")
                files.append(LockedFile(str(f["from"]), str(f["to"]), str(f["sha256"]), int(f["size"])))
            if not files:
                raise _lock_error(path, f"{name}: no files listed")
            version, lic, tarball, integrity = (
                str(entry[k]) for k in ("version", "license", "tarball", "integrity")
            )
            packages.append(
                LockedPackage(name, version, entry["purpose"], lic, tarball, integrity, tuple(files))
            )
    except AssetLockError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise _lock_error(path, f"malformed ({type(exc).__name__}: {exc})") from exc
    dests = [f.dest for p in packages for f in p.files]
    if len(dests) != len(set(dests)):
        raise _lock_error(path, "two files share a destination")
    return tuple(packages)


def lock_drift(packages: Sequence[LockedPackage], wanted: Sequence[Wanted] = ASSETS) -> list[str]:
    """Where the lockfile disagrees with ``ASSETS``: a package or version changed in the code
    without rewriting the lock."""
    locked = {p.name: p for p in packages}
    drift = []
    for w in wanted:
        p = locked.pop(w.name, None)
        if p is None:
            drift.append(f"{w.name} {w.version} is wanted but not in the lockfile")
        elif (p.version, p.purpose) != (w.version, w.purpose):
            drift.append(
                f"{w.name}: the lockfile has {p.version} ({p.purpose}), ASSETS wants {w.version} ({w.purpose})"
            )
        else:
            dests = {f.dest for f in p.files}
            for _, dest in w.files:
                if "*" not in dest and not dest.endswith("/") and f"{w.name}/{dest}" not in dests:
                    drift.append(f"{w.name}: {dest} is wanted but not in the lockfile")
    drift.extend(f"{name} is in the lockfile but no longer wanted" for name in locked)
    return drift


# --- Checking what is placed (offline) --------------------------------------------------------------


def package_problems(package: LockedPackage, vendor: Path = VENDOR_DIR) -> list[str]:
    """One line per listed file that is missing or whose content differs from the lock."""
    problems = []
    for f in package.files:
        path = vendor / f.dest
        if not path.is_file():
            problems.append(f"{package.label}: {f.dest} is missing")
        elif path.stat().st_size != f.size or file_digest(path) != f.sha256:
            problems.append(f"{package.label}: {f.dest} differs from the lockfile")
    return problems


def missing_assets(lock_path: Path = LOCK_PATH, vendor: Path = VENDOR_DIR) -> list[str]:
    """What keeps the dashboard's files from matching the lockfile, one line each (empty when
    everything is in place). Never raises: the server calls it at start-up to warn."""
    try:
        packages = load_lock(lock_path)
    except AssetLockError as exc:
        return [str(exc)]
    return [line for p in packages for line in package_problems(p, vendor)]


def warn_missing_assets(
    logger: logging.Logger, lock_path: Path = LOCK_PATH, vendor: Path = VENDOR_DIR
) -> list[str]:
    """Log one warning naming the command that fetches the files, when some are missing."""
    problems = missing_assets(lock_path, vendor)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        logger.warning(
            "the dashboard's front-end files are not in place (%s); fetch them with: %s", shown, FETCH_COMMAND
        )
    return problems


def register_mimetypes() -> None:
    """Content types the browser insists on: WebAssembly.instantiateStreaming wants
    application/wasm and module scripts (.mjs) a JavaScript type; Python's table lacks both on
    some versions and platforms (/etc/mime.types)."""
    mimetypes.add_type("application/wasm", ".wasm")
    mimetypes.add_type("text/javascript", ".mjs")
    mimetypes.add_type("text/javascript", ".js")


# --- Fetching ------------------------------------------------------------------------------------


def _download(url: str, what: str, command: str = FETCH_COMMAND) -> bytes:
    import requests

    if not url.startswith(REGISTRY):
        raise AssetFetchError(
            f"{what}: {url} is not on {REGISTRY}; the files are fetched from the registry only"
        )
    advice = (
        f"check that this machine reaches {REGISTRY} (behind a proxy, set HTTPS_PROXY), then run: {command}"
    )
    try:
        with requests.get(url, timeout=TIMEOUT_S, stream=True) as resp:
            if resp.status_code != 200:
                raise AssetFetchError(f"{what}: {url} answered HTTP {resp.status_code}; {advice}")
            buf = bytearray()
            for chunk in resp.iter_content(1 << 20):
                buf += chunk
                if len(buf) > MAX_TARBALL_BYTES:
                    raise AssetFetchError(
                        f"{what}: {url} is larger than {MAX_TARBALL_BYTES >> 20} MiB; refused"
                    )
            return bytes(buf)
    except requests.RequestException as exc:
        raise AssetFetchError(
            f"{what}: could not download {url} ({type(exc).__name__}: {exc}); {advice}"
        ) from exc


def verify_integrity(package: LockedPackage, data: bytes) -> None:
    """The tarball's sha512, as npm's Subresource-Integrity string, against the lock's."""
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    if not hmac.compare_digest(got, package.integrity):
        raise AssetIntegrityError(
            f"{package.label}: the tarball from {package.tarball} does not match the lockfile "
            f"(integrity {package.integrity[:27]}..., got {got[:27]}...); nothing was placed. Do not use "
            f"these bytes: retry later, and if the registry really changed the release, review it and "
            f"rewrite the lock with: {LOCK_COMMAND}"
        )


def install_package(package: LockedPackage, tarball: bytes, vendor: Path = VENDOR_DIR) -> None:
    """Check the tarball and every listed file in it against the lock, then write the files, each
    atomically, and remove files under ``vendor/<name>/`` that the lock does not list (a previous
    version's). Nothing is written unless everything checks."""
    verify_integrity(package, tarball)
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tf:
            for f in package.files:
                member = tf.getmember(f.source)
                extracted = tf.extractfile(member) if member.isfile() else None
                if extracted is None:
                    raise AssetIntegrityError(
                        f"{package.label}: {f.source} in the tarball is not a regular file"
                    )
                contents[f.dest] = extracted.read()
    except KeyError as exc:
        raise AssetIntegrityError(
            f"{package.label}: the tarball has no {exc}; rewrite the lock with: {LOCK_COMMAND}"
        ) from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AssetIntegrityError(f"{package.label}: the tarball cannot be read ({exc})") from exc
    for f in package.files:
        if hashlib.sha256(contents[f.dest]).hexdigest() != f.sha256:
            raise AssetIntegrityError(
                f"{package.label}: {f.source} in the tarball differs from the lockfile's sha256; nothing was "
                f"placed; rewrite the lock with: {LOCK_COMMAND}"
            )
    for f in package.files:
        path = vendor / f.dest
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, contents[f.dest])
    _prune(vendor / package.name, {vendor / f.dest for f in package.files})


def _prune(folder: Path, keep: set[Path]) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # children before their folders
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def fetch(lock_path: Path = LOCK_PATH, vendor: Path = VENDOR_DIR) -> list[tuple[LockedPackage, bool]]:
    """Place every package's files; a package whose files are all present and match is skipped
    without touching the network. Returns each package with whether it was downloaded."""
    done = []
    for package in load_lock(lock_path):
        if not package_problems(package, vendor):
            done.append((package, False))
            continue
        install_package(package, _download(package.tarball, package.label), vendor)
        done.append((package, True))
    return done


# --- Writing the lockfile from the registry --------------------------------------------------------


def _resolve_files(wanted: Wanted, names: Iterable[str]) -> list[tuple[str, str]]:
    """(tarball path, vendor path) for each wanted file; the tarball's top folder is usually
    ``package/`` but npm does not insist on it."""
    names = sorted(names)
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        raise AssetLockError(f"{wanted.name} {wanted.version}: the tarball has no single top folder")
    top = tops.pop()
    pairs = list(wanted.files) + ([(wanted.license_file, wanted.license_file)] if wanted.license_file else [])
    out: list[tuple[str, str]] = []
    for source, dest in pairs:
        full = f"{top}/{source}"
        if "*" in source:
            matches = [n for n in names if fnmatch.fnmatchcase(n, full) and n.count("/") == full.count("/")]
            if not matches:
                raise AssetLockError(
                    f"{wanted.name} {wanted.version}: nothing in the tarball matches {source}"
                )
            out.extend((n, f"{wanted.name}/{dest.rstrip('/')}/{n.rsplit('/', 1)[1]}") for n in matches)
        elif full in names:
            out.append((full, f"{wanted.name}/{dest}"))
        else:
            raise AssetLockError(f"{wanted.name} {wanted.version}: the tarball has no {source}")
    return out


def resolve(wanted: Wanted) -> LockedPackage:
    """What ``wanted`` is on the registry now: its tarball and integrity from the version's
    metadata, and the sha256 and size of each file taken, read from the verified tarball."""
    url = f"{REGISTRY}{quote(wanted.name, safe='@')}/{quote(wanted.version)}"
    what = f"{wanted.name} {wanted.version}"
    try:
        meta = json.loads(_download(url, what, LOCK_COMMAND))
        dist = meta["dist"]
        version, tarball = str(meta["version"]), str(dist["tarball"])
        integrity, lic = str(dist.get("integrity", "")), meta.get("license")
    except (ValueError, KeyError, TypeError) as exc:
        raise AssetLockError(f"{what}: unexpected registry metadata at {url} ({exc})") from exc
    if version != wanted.version:
        raise AssetLockError(f"{what}: the registry answered version {version}")
    if not integrity.startswith("sha512-"):
        raise AssetLockError(f"{what}: the registry gives no sha512 integrity for {tarball}")
    license_id = str(lic.get("type") if isinstance(lic, dict) else lic)
    package = LockedPackage(wanted.name, version, wanted.purpose, license_id, tarball, integrity, ())
    data = _download(tarball, what, LOCK_COMMAND)
    verify_integrity(package, data)
    files = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        for source, dest in _resolve_files(wanted, members):
            extracted = tf.extractfile(members[source])
            assert extracted is not None  # a regular file
            content = extracted.read()
            files.append(LockedFile(source, dest, hashlib.sha256(content).hexdigest(), len(content)))
    return replace(package, files=tuple(files))


def dump_lock(packages: Sequence[LockedPackage], lock_path: Path = LOCK_PATH) -> None:
    """Write the lockfile (atomically) and read it back through ``load_lock``'s checks."""
    doc = {
        "_comment": f"Written by `{LOCK_COMMAND}` from ASSETS in eodeploy/web/assets.py; do not edit by hand.",
        "registry": REGISTRY,
        "packages": [
            {
                "name": p.name, "version": p.version, "purpose": p.purpose, "license": p.license,
                "tarball": p.tarball, "integrity": p.integrity,
                "files": [{"from": f.source, "to": f.dest, "sha256": f.sha256, "size": f.size} for f in p.files],
            }
            for p in packages
        ],
    }  # fmt: skip
    atomic_write_bytes(lock_path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    load_lock(lock_path)


def write_lock(lock_path: Path = LOCK_PATH, wanted: Sequence[Wanted] = ASSETS) -> None:
    """Resolve ``wanted`` on the registry and rewrite the lockfile."""
    dump_lock([resolve(w) for w in wanted], lock_path)


# --- Command line --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND,
        description="Fetch the dashboard's front-end files pinned in the lockfile from the npm registry.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="verify the placed files offline (and the shipped lockfile against ASSETS); exit 1 on any problem",
    )
    mode.add_argument(
        "--lock", action="store_true", help="rewrite the lockfile from ASSETS and the registry's metadata"
    )
    parser.add_argument("--lockfile", type=Path, default=LOCK_PATH, help="default: %(default)s")
    parser.add_argument(
        "--dest", type=Path, default=VENDOR_DIR, help="the vendor folder; default: %(default)s"
    )
    args = parser.parse_args(argv)
    try:
        if args.lock:
            write_lock(args.lockfile)
            print(f"wrote {args.lockfile}; now fetch the files with: {FETCH_COMMAND}")
            return 0
        if args.check:
            shipped = args.lockfile.resolve() == LOCK_PATH.resolve()
            drift = lock_drift(load_lock(args.lockfile)) if shipped else []
            problems = [*drift, *missing_assets(args.lockfile, args.dest)]
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print(
                    f"fetch the files with: {FETCH_COMMAND} (a lockfile behind ASSETS: {LOCK_COMMAND})",
                    file=sys.stderr,
                )
                return 1
            print(f"all files in {args.dest} match {args.lockfile}")
            return 0
        for package, downloaded in fetch(args.lockfile, args.dest):
            print(
                f"{package.label}: {'placed' if downloaded else 'already in place'} ({len(package.files)} files)"
            )
        return 0
    except EodeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
