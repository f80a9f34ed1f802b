"""Many scenes on Dask distributed: a LocalCluster by default, or an existing scheduler.

Each scene is one task running the same ``predict_scene`` as a single-process run, so results are
identical; workers load the model package from its path (shared storage on a real cluster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eodeploy._lazy import lazy_import


def _run_one(package_path: str, source: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    from eodeploy.geo.predict import predict_scene
    from eodeploy.package.repository import ModelPackage

    return predict_scene(ModelPackage(package_path), source, out, **options)


def predict_scenes(
    package_path: str | Path,
    sources: list[str | Path],
    out_root: str | Path,
    scheduler: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    on_done: Any = None,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Run ``predict_scene`` for every source, writing ``out_root/<source stem>/``."""
    distributed = lazy_import("distributed", "dask")
    out_root = Path(out_root)
    cluster = None
    if scheduler:
        client = distributed.Client(scheduler)
    else:
        cluster = distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster)
    try:
        options = {"intra_op_threads": threads_per_worker, **options}
        futures = {
            client.submit(
                _run_one, str(package_path), str(s), str(out_root / Path(s).stem), options, pure=False
            ): str(s)
            for s in sources
        }
        results: dict[str, dict[str, Any]] = {}
        for fut in distributed.as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_done:
                on_done(futures[fut])
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
