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
# address/offset not page-aligned"). Every shared object is loaded before and after (modules
# imported, other libraries dlopen'ed): one that loaded before and fails after stops the build.
cat > /tmp/load-all.py <<'PY'
import ctypes, importlib, pathlib, sys
site = pathlib.Path(sys.argv[1])
failed = []
for so in sorted(site.rglob("*.so*")):
    rel = so.relative_to(site)
    if not so.is_file() or any(p.endswith(".libs") for p in rel.parts):
        continue
    try:
        try:  # an extension module: imported
            importlib.import_module(".".join((*rel.parts[:-1], so.name.split(".")[0])))
        except ImportError:  # a plain library, or a module that wants another imported first
            ctypes.CDLL(str(so))
    except Exception as exc:  # recorded, compared before/after
        failed.append(f"{rel}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
pathlib.Path(sys.argv[2]).write_text("\n".join(failed) + "\n")
PY
"$VENV"/bin/python /tmp/load-all.py "$SITE" /tmp/load-before.txt
find "$SITE" -type f -name '*.so*' -not -path '*.libs/*' -exec strip --strip-unneeded {} +
"$VENV"/bin/python /tmp/load-all.py "$SITE" /tmp/load-after.txt
sed 's/: .*//' /tmp/load-before.txt | sort -u > /tmp/load-before.names
sed 's/: .*//' /tmp/load-after.txt | sort -u > /tmp/load-after.names
if [ -n "$(comm -13 /tmp/load-before.names /tmp/load-after.names)" ]; then
    echo "stripped shared objects that no longer load:" >&2
    comm -13 /tmp/load-before.names /tmp/load-after.names | while read -r name; do
        grep -F "$name: " /tmp/load-after.txt >&2
    done
    exit 1
fi
rm -f /tmp/load-all.py /tmp/load-before.* /tmp/load-after.*
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

# The bundled models without their PyTorch weights.pt (only fine-tuning and pruning read it, with
# PyTorch, which the image has not): their items stop linking to it, so no asset dangles.
rm -f "$MODELS"/*/*/weights.pt
"$VENV"/bin/python - "$MODELS" <<'PY'
import json, pathlib, sys
for item_file in pathlib.Path(sys.argv[1]).glob("*/*/item.json"):
    item = json.loads(item_file.read_text())
    assets = item.get("assets", {})
    gone = [k for k, a in assets.items() if not (item_file.parent / a["href"]).is_file()]
    if gone:
        item["assets"] = {k: a for k, a in assets.items() if k not in gone}
        item_file.write_text(json.dumps(item, indent=2) + "\n")
        print(f"{item_file.parent}: assets not in the image: {', '.join(gone)}")
PY

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
    kill -0 "$server" 2>/dev/null || break  # it exited: a taken port, a broken install
    if "$VENV"/bin/eodeploy health >/dev/null 2>&1 && kill -0 "$server" 2>/dev/null; then
        ready=0
        break
    fi
    sleep 0.25
done
kill -TERM "$server" 2>/dev/null || true
rc=0
wait "$server" || rc=$?
if [ "$ready" -ne 0 ] || [ "$rc" -ne 0 ]; then  # SIGTERM drains it to exit 0
    echo "slim-venv.sh: the warm-up server did not come up and stop cleanly on port $EODEPLOY_PORT" \
        "(exit $rc; WARM_PORT=... and WARM_GRPC_PORT=... pick others)" >&2
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
