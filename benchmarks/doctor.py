"""How long ``eodeploy doctor`` takes (the issue asks for under 5 s): the bundled repository with a
SQLite database holding an area whose webhook is a real local receiver, then the same with a real
``eodeploy serve`` process to check, then with the server gone (connections refused) and with one
that accepts connections but never answers (every server check waits out its network timeout). Runs each several times in this process (the first run pays the imports and the
schema compilation, as a CLI call does). Prints a table, writes benchmarks/results/doctor.json.

    python benchmarks/doctor.py [--repeat 5] [--timeout 2]
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from soak import RESULTS, ROOT, Server, free_port

console = Console()


def receiver() -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds allowed for each network call")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    t_import = time.perf_counter()
    from eodeploy.mlops.doctor import run_doctor
    from eodeploy.monitor.db import Area, Database
    from eodeploy.settings import Settings

    import_s = time.perf_counter() - t_import
    hook, seen = receiver()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'doctor.db'}"
        db = Database(url)
        with db.session() as s:
            s.add(Area(name="bench", geojson={}, wkb=b"", area_ha=1.0, model="eurosat-cnn",
                       target_class="Forest", source={"type": "folder"},
                       webhook_url=f"http://127.0.0.1:{hook.server_address[1]}/hook/token"))  # fmt: skip
        db.dispose()
        settings = Settings(model_repo=ROOT / "models", database_url=url, monitor_dir=work / "monitoring",
                            allowed_url_hosts=["127.0.0.1"])  # fmt: skip

        def measure(label: str, server: str | None) -> None:
            times, report = [], None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                report = run_doctor(settings, server=server, results_dir=work, timeout_s=args.timeout)
                times.append(time.perf_counter() - t0)
            assert report is not None
            rows.append({
                "case": label, "runs": args.repeat, "first_s": round(times[0], 3),
                "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                "checks": len(report.checks), "counts": report.counts,
            })  # fmt: skip

        measure("repository + database + webhook dry run", None)
        with Server(ROOT / "models", work / "server.log") as srv:
            measure("… + a live server", f"http://127.0.0.1:{srv.port}")
        measure("… + a server that is down (refused)", f"http://127.0.0.1:{free_port()}")
        with socket.socket() as hung:  # accepts connections (the backlog) and never answers
            hung.bind(("127.0.0.1", 0))
            hung.listen(64)
            measure(
                f"… + a server that hangs ({args.timeout:g} s timeouts)",
                f"http://127.0.0.1:{hung.getsockname()[1]}",
            )
    hook.shutdown()
    assert seen == [], "a dry run sent a request to the webhook"

    table = Table(title=f"eodeploy doctor, wall time per run (imports {import_s:.2f} s once)")
    for col in ("case", "checks", "✓/!/✗", "first s", "median s", "max s"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        c = r["counts"]
        table.add_row(r["case"], str(r["checks"]), f"{c['ok']}/{c['warn']}/{c['fail']}", f"{r['first_s']:.2f}",
                      f"{r['median_s']:.2f}", f"{r['max_s']:.2f}")  # fmt: skip
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "import_s": round(import_s, 3),
        "timeout_s": args.timeout,
        "webhook_requests": len(seen),
        "rows": rows,
    }
    (args.out / "doctor.json").write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out / 'doctor.json'}")


if __name__ == "__main__":
    main()
