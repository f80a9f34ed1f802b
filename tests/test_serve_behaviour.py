"""Serving behaviour in-process (the real app under TestClient): batching, back-pressure,
versions and canary, hot reload, repository API, auth, cache (LRU and the real Redis)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    BIAS,
    WEIGHTS_V2,
    add_tiny_v2,
    linear_onnx,
    linear_spec,
    make_repo,
    reference_proba,
    reference_proba_v2,
    require,
)
from eodeploy.errors import InferenceTimeoutError, InvalidInputError, ServerBusyError

require("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from eodeploy.serve.batcher import BatchConfig, DynamicBatcher  # noqa: E402


def predict(client: TestClient, raw: np.ndarray, path: str = "/v1/models/tiny:predict", **headers: str):  # type: ignore[no-untyped-def]
    return client.post(path, content=json.dumps({"instances": raw.tolist()}), headers=headers)


# --- the dynamic batcher ------------------------------------------------------------------------
def _batcher(run_delay: float, **cfg: float) -> tuple[DynamicBatcher, list[int]]:
    sizes: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        time.sleep(run_delay)
        return x.reshape(len(x), -1)[:, :2] * 2

    def pre(x: np.ndarray, _bands: object, _units: object = None) -> np.ndarray:
        if np.isnan(x).any():
            raise InvalidInputError("NaN in input")
        return x.astype(np.float32)

    return DynamicBatcher(pre, run, BatchConfig(**cfg)), sizes  # type: ignore[arg-type]


def test_batcher_gathers_requests_and_returns_each_its_rows() -> None:
    async def main() -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        batcher, sizes = _batcher(0.02, max_batch_size=16, max_queue_delay_s=0.01)
        batcher.start()
        inputs = [np.full((1 + i % 3, 1, 2, 2), i, np.float32) for i in range(12)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        return inputs, outs, sizes

    inputs, outs, sizes = asyncio.run(main())
    for x, y in zip(inputs, outs):
        np.testing.assert_array_equal(y, x.reshape(len(x), -1)[:, :2] * 2)
    assert max(sizes) > 1 and sum(sizes) == sum(len(x) for x in inputs)
    assert max(sizes) <= 16


def test_batcher_bad_request_fails_alone() -> None:
    async def main() -> list[object]:
        batcher, _ = _batcher(0.0, max_batch_size=8, max_queue_delay_s=0.01)
        batcher.start()
        good = np.ones((1, 1, 2, 2), np.float32)
        bad = np.full((1, 1, 2, 2), np.nan, np.float32)
        res = await asyncio.gather(
            batcher.submit(good), batcher.submit(bad), batcher.submit(good), return_exceptions=True
        )
        await batcher.close()
        return res

    res = asyncio.run(main())
    assert isinstance(res[1], InvalidInputError)
    assert isinstance(res[0], np.ndarray) and isinstance(res[2], np.ndarray)


def test_batcher_refuses_when_queue_full_and_times_out() -> None:
    async def main() -> list[object]:
        batcher, _ = _batcher(0.2, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=3, timeout_s=0.1)
        batcher.start()
        x = np.ones((1, 1, 2, 2), np.float32)
        tasks = [asyncio.create_task(batcher.submit(x)) for _ in range(6)]
        res = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return res

    res = asyncio.run(main())
    kinds = [type(r).__name__ for r in res]
    assert "ServerBusyError" in kinds  # bounded queue: refused, not buffered
    assert "InferenceTimeoutError" in kinds  # waited past its timeout behind a slow batch
    assert "ndarray" in kinds
    busy = next(r for r in res if isinstance(r, ServerBusyError))
    assert "queue is full" in str(busy)
    assert any(isinstance(r, InferenceTimeoutError) and "timeout" in str(r) for r in res)


def test_busy_and_timeout_map_to_503_and_504() -> None:
    from eodeploy.serve.errors import domain_error_handler

    busy = asyncio.run(domain_error_handler(None, ServerBusyError("full", retry_after_s=2)))  # type: ignore[arg-type]
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    timeout = asyncio.run(domain_error_handler(None, InferenceTimeoutError("slow")))  # type: ignore[arg-type]
    assert timeout.status_code == 504 and json.loads(timeout.body) == {"error": "slow"}


# --- versions, labels, canary -------------------------------------------------------------------
def test_labels_and_canary_split(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path, versions=2)
    (repo.root / "tiny" / "serving.json").write_text(
        json.dumps({"version_policy": "latest:1", "labels": {"stable": 1, "canary": 2}, "canary_percent": 30})
    )
    client = client_for(repo)
    x = raw_patches[:2]
    stable = predict(client, x, "/v1/models/tiny/labels/stable:predict").json()["predictions"]
    canary = predict(client, x, "/v1/models/tiny/labels/canary:predict").json()["predictions"]
    np.testing.assert_allclose(stable, reference_proba(x), atol=1e-5)
    np.testing.assert_allclose(canary, reference_proba_v2(x), atol=1e-5)
    # Unaddressed traffic: 30 % to the canary, decided per routing key (same key, same side).
    keys = [f"user-{i}" for i in range(200)]
    served = []
    for key in keys:
        r = client.post(
            "/v2/models/tiny/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 13, 64, 64],
                        "datatype": "UINT16",
                        "data": x[0].ravel().tolist(),
                    }
                ]
            },
            headers={"X-Routing-Key": key},
        )
        served.append(int(r.json()["model_version"]))
    expected = [2 if (zlib.crc32(k.encode()) % 10000) / 100 < 30 else 1 for k in keys]
    assert served == expected
    assert 0.2 < served.count(2) / len(served) < 0.4
    metrics = client.get("/metrics").text
    assert (
        'eodeploy_inference_requests_total{model="tiny",outcome="success",protocol="oip_http_json",version="2"}'
        in metrics
    )


def test_version_policy_all_and_specific(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path, versions=2)
    client = client_for(repo, version_policy="specific:1")
    status = client.get("/v1/models/tiny").json()["model_version_status"]
    assert [s["version"] for s in status] == ["1"]
    assert client.get("/v2/models/tiny/versions/2/ready").status_code == 404
    client2 = client_for(repo, version_policy="all")
    assert client2.get("/v2/models/tiny").json()["versions"] == ["1", "2"]


def test_hot_reload_takes_traffic_without_failing_requests(
    tmp_path: Path, client_for, raw_patches: np.ndarray
) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path)
    client = client_for(repo, poll_interval_s=0.1)
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def hammer() -> None:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 13, 64, 64],
                    "datatype": "UINT16",
                    "data": raw_patches[0].ravel().tolist(),
                }
            ]
        }
        while not stop.is_set():
            r = client.post("/v2/models/tiny/infer", json=body)
            results.append((r.status_code, r.json().get("model_version", r.text)))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    add_tiny_v2(repo)  # a new version folder appears (atomically, as ModelRepository.add writes)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(v == "2" for _, v in results[-5:]):
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    versions = [v for _, v in results]
    assert "1" in versions and versions[-1] == "2"
    status = client.get("/v1/models/tiny").json()["model_version_status"]
    assert [s["version"] for s in status] == ["2"]  # latest:1 — version 1 was drained and unloaded


def test_broken_new_version_keeps_old_one_serving(
    tmp_path: Path, client_for, raw_patches: np.ndarray
) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path)
    add_tiny_v2(repo)
    (repo.root / "tiny" / "2" / "model.onnx").write_bytes(b"not a model")
    client = client_for(repo, version_policy="all")
    index = client.post("/v2/repository/index").json()
    states = {r["version"]: r for r in index}
    assert states["1"]["state"] == "AVAILABLE"
    assert states["2"]["state"] == "UNAVAILABLE" and "sha256" in states["2"]["reason"]
    r = predict(client, raw_patches[:1])
    assert r.status_code == 200
    r = predict(client, raw_patches[:1], "/v1/models/tiny/versions/2:predict")
    assert r.status_code == 503 and "failed to load" in r.json()["error"]


# --- repository API and auth --------------------------------------------------------------------
def test_repository_api_needs_key_and_loads_unloads(
    tmp_path: Path, client_for, raw_patches: np.ndarray
) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path), api_keys=["s3cret"])
    r = client.post("/v2/repository/index")
    assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
    assert client.post("/v2/repository/index", headers={"X-API-Key": "wrong"}).status_code == 401
    key = {"X-API-Key": "s3cret"}
    assert client.post("/v2/repository/index", headers=key).status_code == 200
    assert predict(client, raw_patches[:1]).status_code == 200  # inference stays open by default
    assert client.post("/v2/repository/models/tiny/unload", headers=key).status_code == 200
    assert client.get("/v2/models/tiny/ready").status_code == 404
    assert (
        client.post("/v2/repository/index", headers={"Authorization": "Bearer s3cret"}).json()[0]["state"]
        == "UNAVAILABLE"
    )
    assert client.post("/v2/repository/models/tiny/load", headers=key).status_code == 200
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.post("/v2/repository/models/nope/load", headers=key).status_code == 404


def test_inference_auth_when_enabled(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path), api_keys=["k1", "k2"], auth_inference=True)
    assert predict(client, raw_patches[:1]).status_code == 401
    assert predict(client, raw_patches[:1], **{"X-API-Key": "k2"}).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200  # health stays open for probes


def test_patch_count_limit(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path), max_request_patches=3)
    r = predict(client, raw_patches)
    assert r.status_code == 413 and "limit of 3" in r.json()["error"]


# --- response cache -----------------------------------------------------------------------------
def _cache_counts(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    hits = misses = 0.0
    for line in text.splitlines():
        if line.startswith('eodeploy_cache_hits_total{model="tiny"}'):
            hits = float(line.split()[-1])
        if line.startswith('eodeploy_cache_misses_total{model="tiny"}'):
            misses = float(line.split()[-1])
    return hits, misses


def test_lru_cache_hits(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path))
    a = predict(client, raw_patches).json()
    b = predict(client, raw_patches).json()
    assert a == b
    assert _cache_counts(client) == (1.0, 1.0)
    predict(client, raw_patches[:2])  # different bytes: a miss
    assert _cache_counts(client) == (1.0, 2.0)


def test_lru_cache_is_bounded_by_bytes() -> None:
    from eodeploy.serve.cache import LRUCache

    async def main() -> None:
        cache = LRUCache(max_bytes=1000)
        for i in range(15):
            await cache.put(f"k{i}", np.full((1, 10), i, np.float32))  # 64 bytes each
        assert len(cache) == 15
        await cache.put("big", np.zeros((10, 30), np.float32))  # larger than the whole cache
        assert await cache.get("big") is None
        for i in range(15, 60):
            await cache.put(f"k{i}", np.full((1, 10), i, np.float32))
        assert await cache.get("k0") is None and await cache.get("k59") is not None
        assert len(cache) * 64 <= 1000

    asyncio.run(main())


def test_cached_results_keep_any_rank() -> None:
    """A segmentation model's (N, classes, H, W) result round-trips through both caches."""
    from eodeploy.serve.cache import LRUCache, RedisCache

    maps = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)

    async def main() -> None:
        redis_cache = RedisCache(REDIS, prefix=f"eodeploy-test:{uuid.uuid4().hex}:")
        for cache in (LRUCache(1 << 20), redis_cache):
            await cache.put("m:k", maps)
            hit = await cache.get("m:k")
            assert hit is not None and hit.shape == maps.shape
            np.testing.assert_array_equal(hit, maps)
        await redis_cache.invalidate("m")
        await redis_cache.close()

    _require_redis()
    asyncio.run(main())


REDIS = "redis://127.0.0.1:6379/0"


def _require_redis() -> None:
    redis = require("redis")
    try:
        redis.Redis.from_url(REDIS).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (CI starts it; see .ci/run)")


def test_redis_cache_is_shared_between_replicas(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    _require_redis()
    prefix = f"eodeploy-test:{uuid.uuid4().hex}:"  # this test's own keys: no entry from an earlier run
    repo = make_repo(tmp_path)
    a, b = (
        client_for(repo, redis_url=REDIS, redis_prefix=prefix),
        client_for(repo, redis_url=REDIS, redis_prefix=prefix),
    )
    first = predict(a, raw_patches).json()
    second = predict(b, raw_patches).json()
    assert first == second
    assert _cache_counts(a) == (0.0, 1.0) and _cache_counts(b) == (1.0, 0.0)


def test_reused_version_number_never_serves_the_removed_model(
    tmp_path: Path, client_for, raw_patches: np.ndarray
) -> None:  # type: ignore[no-untyped-def]
    """models remove + add reuses version 1 for another model: neither the shared Redis cache nor
    a running server's hot reload may keep answering with the removed one."""
    _require_redis()
    prefix = f"eodeploy-test:{uuid.uuid4().hex}:"
    repo = make_repo(tmp_path)
    x = raw_patches[:2]
    old_server = client_for(repo, redis_url=REDIS, redis_prefix=prefix)
    np.testing.assert_allclose(predict(old_server, x).json()["predictions"], reference_proba(x), atol=1e-5)
    repo.remove("tiny", 1)
    assert repo.add("tiny", linear_onnx(WEIGHTS_V2, BIAS), linear_spec()).version == 1
    # A replica started now shares the Redis entries the old server wrote for "tiny" version 1.
    new_server = client_for(repo, redis_url=REDIS, redis_prefix=prefix)
    np.testing.assert_allclose(predict(new_server, x).json()["predictions"], reference_proba_v2(x), atol=1e-5)
    # The running server reloads the changed version 1 on its next repository scan.
    assert old_server.post("/v2/repository/models/tiny/load").status_code == 200
    np.testing.assert_allclose(predict(old_server, x).json()["predictions"], reference_proba_v2(x), atol=1e-5)


def test_unload_drops_the_models_cache_entries(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path))
    predict(client, raw_patches[:1])
    predict(client, raw_patches[:2])
    cache = client.app.state.inference.cache
    assert len(cache) == 2
    assert client.post("/v2/repository/models/tiny/unload").status_code == 200
    assert len(cache) == 0


def test_slow_redis_never_stalls_the_server(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """A Redis that accepts connections and never answers: requests pay its timeout once, then the
    circuit breaker skips it; meanwhile other requests (liveness) are not held up."""
    import socket

    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)  # accepts (the kernel does) but never reads or answers
    port = sink.getsockname()[1]
    try:
        client = client_for(make_repo(tmp_path), redis_url=f"redis://127.0.0.1:{port}/0")
        results: list[float] = []

        def slow_request() -> None:
            t = time.perf_counter()
            assert predict(client, raw_patches[:1]).status_code == 200
            results.append(time.perf_counter() - t)

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(0.1)  # the request is now waiting on Redis
        t = time.perf_counter()
        assert client.get("/v2/health/live").status_code == 200
        live_s = time.perf_counter() - t
        worker.join()
        assert live_s < 0.3, f"liveness waited {live_s:.2f} s behind a slow Redis (timeout 0.5 s)"
        assert not client.app.state.inference.cache.available  # the breaker is open
        t = time.perf_counter()
        for _ in range(5):  # the breaker is open: no more waiting on Redis
            assert predict(client, raw_patches[:1]).status_code == 200
        assert time.perf_counter() - t < 1.0
    finally:
        sink.close()


def test_redis_down_degrades_to_misses(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path), redis_url="redis://127.0.0.1:1/0")
    r = predict(client, raw_patches[:1])
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], reference_proba(raw_patches[:1]), atol=1e-5)


def test_route_cli_writes_serving_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.setenv("EODEPLOY_DATABASE_URL", f"sqlite:///{tmp_path / 'history.db'}")  # route records

    from eodeploy.cli.main import app

    repo = make_repo(tmp_path, versions=2)
    res = CliRunner().invoke(
        app,
        [
            "models",
            "route",
            "tiny",
            "--stable",
            "1",
            "--canary",
            "2",
            "--percent",
            "10",
            "--repo",
            str(repo.root),
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads((repo.root / "tiny" / "serving.json").read_text())
    assert cfg == {"version_policy": "latest:1", "labels": {"stable": 1, "canary": 2}, "canary_percent": 10.0}
    res = CliRunner().invoke(app, ["models", "route", "tiny", "--canary", "9", "--repo", str(repo.root)])
    assert res.exit_code == 2 and "no version 9" in res.output
    res = CliRunner().invoke(app, ["models", "route", "tiny", "--policy", "newest", "--repo", str(repo.root)])
    assert res.exit_code == 2 and "not understood" in res.output


def test_api_docs_work_offline(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    """/docs loads Swagger UI from the server itself: a CDN script leaves the page blank offline."""
    client = client_for(make_repo(tmp_path))
    page = client.get("/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static/swagger-ui/{asset}" in page.text
        got = client.get(f"/static/swagger-ui/{asset}")
        assert got.status_code == 200 and len(got.content) > 100_000
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")
