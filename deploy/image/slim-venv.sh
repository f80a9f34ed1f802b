#!/bin/sh
# Run by the Dockerfile's build stage on the freshly installed /opt/venv (pip install --no-compile):
# what the server image does not need goes, measured in docs/deployment.md (Container image).
#   slim-venv.sh MODELS_DIR FUSED_DIR ONNX_TARGET
# MODELS_DIR: the bundled models; FUSED_DIR: where their browser models go (eodeploy models fuse);
# ONNX_TARGET: a folder holding the onnx package (pip install --target), used for that step only.
set -eu
MODELS=$1 FUSED=$2 ONNX=$3
VENV=/opt/venv
SITE=$(echo "$VENV"/lib/python3*/site-packages)

# Debug symbols of the extension modules (~100 MB). Not the libraries auditwheel vendored into
# *.libs/: patchelf rewrote those, and strip leaves them unloadable ("ELF load command
# address/offset not page-aligned").
find "$SITE" -type f -name '*.so*' -not -path '*.libs/*' -exec strip --strip-unneeded {} +
# Every extension module still loads (a damaged one would fail here, not in production).
"$VENV"/bin/python - "$SITE" <<'PY'
import importlib, pathlib, sys
site = pathlib.Path(sys.argv[1])
bad = []
for so in site.rglob("*.so"):
    rel = so.relative_to(site)
    if any(p.endswith(".libs") for p in rel.parts) or rel.parts[0].endswith(".dist-info"):
        continue
    try:
        importlib.import_module(".".join((*rel.parts[:-1], rel.name.split(".")[0])))
    except ImportError as exc:
        if "ELF" in str(exc):
            bad.append(f"{rel}: {exc}")
if bad:
    sys.exit("stripped extension modules that no longer load:\n" + "\n".join(bad))
PY
# ONNX Runtime's C-API library (34 MB): for programs that link it; the Python binding does not load it.
rm -f "$SITE"/onnxruntime/capi/libonnxruntime.so.*
# ONNX Runtime's offline tooling (model conversion, quantisation, transformer optimisation): eodeploy
# optimises models with the convert extra, never in the server.
rm -rf "$SITE"/onnxruntime/transformers "$SITE"/onnxruntime/quantization "$SITE"/onnxruntime/tools
# Test suites; what building against a package needs (C headers, Cython sources, type stubs);
# source maps (Swagger UI's: for debugging the Swagger UI itself).
find "$SITE" -depth -type d -name tests -exec rm -rf {} +
find "$SITE" -type f \( -name '*.h' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.pyi' \
    -o -name '*.js.map' -o -name '*.css.map' \) -delete

# The dashboard's browser models, built and checked now: the server has no onnx (the convert extra).
PYTHONPATH=$ONNX "$VENV"/bin/eodeploy models fuse --repo "$MODELS" --out "$FUSED"

# Bytecode for what a server start imports (start to ready is ~2 s with it, ~3.5 s without on a
# read-only root, where nothing can be cached), and for the packages requests use; the rest
# compiles in memory when first imported. A real server start finds out what it imports.
export EODEPLOY_MODEL_REPO=$MODELS EODEPLOY_HOST=127.0.0.1 EODEPLOY_PORT=${WARM_PORT:-18479} \
    EODEPLOY_GRPC_PORT=${WARM_GRPC_PORT:-18478} EODEPLOY_DATABASE_URL=sqlite:////tmp/warm.db \
    EODEPLOY_MONITOR_DIR=/tmp/warm EODEPLOY_FUSED_DIR=$FUSED
unset PYTHONDONTWRITEBYTECODE
"$VENV"/bin/eodeploy serve &
server=$!
ready=1
for _ in $(seq 240); do
    if "$VENV"/bin/eodeploy health >/dev/null 2>&1; then ready=0; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.25
done
kill -TERM "$server" 2>/dev/null || true
wait "$server" || true
if [ "$ready" -ne 0 ]; then
    echo "slim-venv.sh: the server did not become ready on port $EODEPLOY_PORT (WARM_PORT=... picks another)" >&2
    exit 1
fi
# Written again as unchecked-hash .pyc, with the packages requests use: COPY --from does not keep
# sub-second mtimes, so timestamp-checked .pyc files would all be stale in the runtime stage (and
# compiled again at every start); the image never changes, so nothing needs checking.
"$VENV"/bin/python - "$SITE" <<'PY'
import pathlib, py_compile, sys
site = pathlib.Path(sys.argv[1])
lazily = ["eodeploy", "rasterio", "rio_tiler", "PIL", "pyproj", "shapely", "morecantile", "psycopg"]
sources = {p for name in lazily for p in (site / name).rglob("*.py")}
sources |= {pyc.parent.parent / f"{pyc.name.split('.')[0]}.py" for pyc in site.rglob("__pycache__/*.pyc")}
for src in sorted(p for p in sources if p.is_file()):
    try:
        py_compile.compile(str(src), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError as exc:  # a template or a file for another Python
        print(f"not compiled: {exc.msg.splitlines()[0]}", file=sys.stderr)
PY
rm -rf /tmp/warm /tmp/warm.db
