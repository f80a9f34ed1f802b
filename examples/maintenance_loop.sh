#!/usr/bin/env bash
# The maintenance loop on the bundled data, end to end (docs/mlops.md, "A worked example"):
#   1. an area is monitored; three later scenes arrive 1000 DN brighter in every spectral band (the
#      offset ESA's processing baseline 04.00 added to L1C from 25 January 2022) -> drift is flagged
#      on 3 of the last 5 clear observations, against the package's reference statistics (cause
#      named) and against the area's own baseline;
#   2. `eodeploy triggers check` records the drift trigger (once);
#   3. `eodeploy retrain` trains a candidate (v4) from the package's recorded recipe (v3's: fine-tuned
#      from eurosat-rgb v1);
#   4. on a real server under traffic (real 13-band patches: v3's EuroSAT test patches and windows
#      of the clear Lahinch scenes): the retrained v4 rolled out against v3 (the quality gate
#      compares their test accuracies on the same split first) and promoted; the old small CNN v1
#      rolled out against v4 and rolled back by the live checks (it disagrees on the scenes);
#   5. `eodeploy models history` lists every decision.
# Everything happens in a scratch folder (default /tmp/eodeploy-loop): the bundled repository is
# copied, never changed. Needs the dev install (make install-dev) and ../shared/data.
set -euo pipefail
export COLUMNS="${COLUMNS:-120}"  # wide enough for the tables
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/tmp/eodeploy-loop}"
BIN="$ROOT/.venv/bin"
S2="$ROOT/../shared/data/sentinel2"
PORT="${PORT:-8765}"
rm -rf "$WORK" && mkdir -p "$WORK/scenes"
cp -r "$ROOT/models" "$WORK/models"
export EODEPLOY_MODEL_REPO="$WORK/models" EODEPLOY_DATABASE_URL="sqlite:///$WORK/loop.db" \
       EODEPLOY_MONITOR_DIR="$WORK/monitoring" EODEPLOY_DATA_DIR="$ROOT/../shared/data/eurosat" \
       EODEPLOY_PORT="$PORT" EODEPLOY_GRPC_PORT=0 EODEPLOY_POLL_INTERVAL_S=1 \
       EODEPLOY_CANARY_MIRROR_SHARE=0.5

echo "== 1. scenes: three clear Lahinch dates, then the same three with the +1000 DN offset of baseline 04.00"
for d in 2017-09-18 2017-09-21 2017-09-26; do ln -s "$S2/lahinch_IE_s2l1c_$d.tif" "$WORK/scenes/"; done
"$BIN/python" - "$S2" "$WORK/scenes" <<'EOF'
import sys
import numpy as np
import rasterio
src, dst = sys.argv[1:]
for old, new in (("2017-09-18", "2022-03-02"), ("2017-09-21", "2022-03-05"), ("2017-09-26", "2022-03-10")):
    with rasterio.open(f"{src}/lahinch_IE_s2l1c_{old}.tif") as r:
        profile, data, names = r.profile, r.read(), r.descriptions
    with rasterio.open(f"{dst}/lahinch_IE_s2l1c_{new}.tif", "w", **profile) as w:
        bands = [i for i, n in enumerate(names) if n.startswith("B")]  # not the QA60/cloud-probability layers
        data[bands] = np.where(np.isfinite(data[bands]), data[bands] + 1000, data[bands])
        w.write(data)
        w.descriptions = names
EOF
"$BIN/eodeploy" monitor add lahinch --geometry "$ROOT/src/eodeploy/monitor/examples/lahinch.geojson" \
  --class Pasture --folder "$WORK/scenes" --pattern 'lahinch_*.tif'
"$BIN/eodeploy" monitor run --area lahinch
"$BIN/eodeploy" monitor series lahinch

echo "== 2. retraining triggers"
"$BIN/eodeploy" triggers check --no-send
"$BIN/eodeploy" triggers list

echo "== 3. retrain: a candidate from the recorded recipe"
"$BIN/eodeploy" retrain eurosat-cnn ${EPOCHS:+--epochs "$EPOCHS"}
"$BIN/eodeploy" models list

echo "== 4. a real server under traffic; rollouts"
"$BIN/eodeploy" models route eurosat-cnn --stable 3
"$BIN/eodeploy" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
"$BIN/python" - "$PORT" "$WORK/traffic.json" "$S2" <<'EOF' &
# Steady traffic from one client (OIP JSON), every answer counted: real 13-band patches none of
# the ResNets trained on, v3's 79 EuroSAT test patches and 64x64 windows of the clear Lahinch dates,
# alternately.
import json, os, sys, time
from pathlib import Path
import numpy as np, rasterio, requests
port, out = sys.argv[1], sys.argv[2]
repo, s2 = Path(os.environ["EODEPLOY_MODEL_REPO"]), Path(sys.argv[3])
test = json.loads((repo / "eurosat-cnn/3/split.json").read_text())["test"]
eurosat = [rasterio.open(Path(os.environ["EODEPLOY_DATA_DIR"]) / f).read().astype(np.float32) for f in test]
scene = []
for d in ("2017-09-18", "2017-09-21", "2017-09-26"):
    with rasterio.open(s2 / f"lahinch_IE_s2l1c_{d}.tif") as r:
        a = r.read([i + 1 for i, n in enumerate(r.descriptions) if n.startswith("B")]).astype(np.float32)
    windows = (a[:, y:y + 64, x:x + 64] for y in range(0, a.shape[1] - 63, 16) for x in range(0, a.shape[2] - 63, 16))
    scene += [w for w in windows if np.isfinite(w).all()]  # nodata (NaN) is not a patch anyone sends
patches = [p for pair in zip(eurosat * 3, scene) for p in pair]
url = f"http://127.0.0.1:{port}/v2/models/eurosat-cnn/infer"
for _ in range(600):
    try:
        if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).ok:
            break
    except requests.ConnectionError:
        pass
    time.sleep(0.1)
counts, versions = {}, {}
i = 0
while not Path(out + ".stop").exists():
    p = patches[i % len(patches)]
    body = {"inputs": [{"name": "input", "shape": [1, *p.shape], "datatype": "FP32", "data": p.ravel().tolist()}]}
    r = requests.post(url, json=body, timeout=30)
    counts[r.status_code] = counts.get(r.status_code, 0) + 1
    v = str(r.json().get("model_version", "?")) if r.ok else "failed"
    versions[v] = versions.get(v, 0) + 1
    i += 1
    time.sleep(0.025)
Path(out).write_text(json.dumps({"status": counts, "versions": versions}))
EOF
TRAFFIC=$!
sleep 3
W="--window-s 15 --server http://127.0.0.1:$PORT"
echo "-- the retrained v4 against the champion v3"
"$BIN/eodeploy" models rollout eurosat-cnn --candidate 4 $W || true
echo "-- the old small CNN v1 against the new champion v4"
"$BIN/eodeploy" models rollout eurosat-cnn --candidate 1 $W || true

touch "$WORK/traffic.json.stop"; wait "$TRAFFIC" || true
kill "$SERVER"; wait "$SERVER" || true
echo "traffic: $(cat "$WORK/traffic.json")"

echo "== 5. history"
COLUMNS=200 "$BIN/eodeploy" models history eurosat-cnn
