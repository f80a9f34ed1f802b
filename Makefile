# The README's two commands are `make run` and `make test`; CI (.ci/run) calls `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/eurosat
S2DIR ?= ../shared/data/sentinel2
SCENE ?= $(S2DIR)/lahinch_IE_s2l1c_2017-09-18.tif

.PHONY: run serve test lint bench soak install install-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Then the dashboard's front-end files, pinned in src/eodeploy/web/assets.lock.json, from the npm registry.
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[plot,convert]'
	$(BIN)/python -m eodeploy.web.assets

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[plot,convert,train,keras,serve,openvino,litert,dask,postgres,dev]'
	$(BIN)/python -m eodeploy.web.assets

# Main job on embedded defaults: the bundled model evaluated on the held-out split of the shared
# EuroSAT data, then a real 13-band Sentinel-2 scene and the Philippine (Tawi-Tawi) true-colour
# scene turned into maps with per-class hectares, then monitoring passes over an area in the five-date Lahinch series and
# one on the Tawi-Tawi mangrove coast (results in ./eodeploy.db, shown by the dashboard: make serve).
run: install
	$(BIN)/eodeploy models list
	$(BIN)/eodeploy evaluate eurosat-cnn $(DATA) --split test --no-save --plot confusion_test.png
	$(BIN)/eodeploy predict eurosat-cnn $(SCENE) --out predictions/lahinch --overwrite
	$(BIN)/eodeploy predict eurosat-rgb $(S2DIR)/tawitawi_PH_s2l2a_rgb.tif --out predictions/tawitawi --overwrite
	$(BIN)/eodeploy monitor add lahinch --geometry src/eodeploy/monitor/examples/lahinch.geojson \
		--class Pasture --folder $(S2DIR) --pattern 'lahinch_*.tif' --threshold-ha 5 --alert-on loss
	$(BIN)/eodeploy monitor run --area lahinch
	$(BIN)/eodeploy monitor add tawi-tawi --geometry src/eodeploy/monitor/examples/tawitawi.geojson \
		--model eurosat-rgb --class Forest --folder $(S2DIR) --pattern 'tawitawi_*.tif'
	$(BIN)/eodeploy monitor run --area tawi-tawi
	$(BIN)/eodeploy monitor series lahinch --plot monitoring/lahinch-series.png
	$(BIN)/eodeploy monitor alerts
	@echo
	@echo "Dashboard (maps, series, alerts, models, in-browser inference): run 'make serve', then open"
	@echo "    http://127.0.0.1:8000/dashboard"

# The server over the bundled models and ./eodeploy.db (what make run filled): TF Serving REST,
# OIP v2 REST + gRPC, /monitor and the dashboard at http://127.0.0.1:8000/dashboard.
serve: install
	$(BIN)/pip install -q -e '.[serve]'
	$(BIN)/eodeploy serve

# Static checks first (seconds: ruff, then mypy from its cache), then all tests with every optional
# stack required (a missing one fails instead of skipping).
test: lint
	EODEPLOY_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

bench: install-dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/training.py --data $(DATA)
	$(BIN)/python benchmarks/optimize.py --data $(DATA)
	$(BIN)/python benchmarks/serving.py --data $(DATA)

# A real server at 50 % of its capacity for 2 minutes, then a control that leaks on purpose
# (SOAK_MINUTES=30 for the long form); figures in benchmarks/results/soak.json.
SOAK_MINUTES ?= 2
soak: install-dev
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
