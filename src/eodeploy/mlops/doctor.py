"""``eodeploy doctor``: the guide's "Deployment Readiness" checklist, evaluated rather than ticked.

Each check reads what is really there — packages on disk, a running server, the database, the
alert channels, benchmark results, the latest observation's maps — and answers one line: ok, a
warning or a failure, what was found and the fix. Nothing is changed and no alert is sent: the
webhook and SMTP checks connect and hang up. Checks run in parallel with a timeout on every
network call, so the whole run stays within a few seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eodeploy.errors import EodeployError
from eodeploy.settings import Settings

OK, WARN, FAIL = "ok", "warn", "fail"
SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗"}
#: The guide's bar for "Model trained and validated".
MIN_ACCURACY = 0.90
#: Quantiles of each band that drift scores need (package.stats.robust_shift: median and IQR).
DRIFT_QUANTILES = ("p25", "p50", "p75")
GROUPS = ("model", "server", "database", "alerts", "testing", "outputs")


@dataclass(frozen=True)
class Check:
    group: str  # one of GROUPS
    name: str
    status: str  # ok, warn, fail
    finding: str
    fix: str | None = None

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.status]

    def line(self) -> str:
        fix = f" → fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.symbol} {self.name}: {self.finding}{fix}"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    targets: dict[str, str | None] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL)}

    @property
    def exit_code(self) -> int:
        """0 when every check passes, 1 with warnings only, 2 with any failure."""
        counts = self.counts
        return 2 if counts[FAIL] else 1 if counts[WARN] else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "targets": self.targets,
            "checks": [{**asdict(c), "symbol": c.symbol} for c in self.checks],
        }

    def masked(self, mask: Callable[[str], str]) -> Report:
        """The same report with ``mask`` applied to every text (the API scrubs server paths too)."""
        return Report(
            [
                Check(c.group, mask(c.name), c.status, mask(c.finding), mask(c.fix) if c.fix else None)
                for c in self.checks
            ],
            self.seconds,
            {k: mask(v) if v else v for k, v in self.targets.items()},
        )


class _Secrets:
    """Every secret the checks could meet (keys, passwords, webhook paths): a last net that blanks
    them in any text, whatever built it."""

    def __init__(self, settings: Settings, database_url: str | None) -> None:
        self.values: set[str] = {k.get_secret_value() for k in settings.api_keys}
        if settings.smtp_password is not None:
            self.values.add(settings.smtp_password.get_secret_value())
        if database_url:
            self.add_url(database_url)

    def add_url(self, url: str) -> None:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
        except ValueError:
            self.values.add(url)
            return
        if parts.password:
            self.values.add(parts.password)
        secret = parts.path.lstrip("/") + ("?" + parts.query if parts.query else "")
        if parts.scheme in ("http", "https") and secret:
            self.values.add(secret)  # Slack/Teams hooks carry their token in the path

    def __call__(self, text: str) -> str:
        for value in sorted((v for v in self.values if len(v) >= 4), key=len, reverse=True):
            text = text.replace(value, "***")
        return text


def pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def run_doctor(
    settings: Settings,
    repo: Path | None = None,
    server: str | None = None,
    database_url: str | None = None,
    results_dir: Path = Path("benchmarks/results"),
    max_result_age_days: float = 30.0,
    timeout_s: float = 2.0,
    dry_run_channels: bool = True,
) -> Report:
    """Run every check that applies and return them in the checklist's order.

    ``server``: base URL of a running eodeploy server (server checks only when given).
    ``database_url``: the results database (default: the settings'). ``timeout_s`` bounds each
    network call; checks run in parallel, so the total stays near the slowest one."""
    from eodeploy.mlops import _doctor_alerts as alerts
    from eodeploy.mlops import _doctor_infra as infra
    from eodeploy.mlops import _doctor_server as web

    started = time.perf_counter()
    repo_root = repo if repo is not None else settings.model_repo
    db_url = database_url or settings.database_url
    secrets = _Secrets(settings, db_url)
    tasks: list[tuple[str, Callable[[], list[Check]]]] = [
        ("model", lambda: model_checks(settings, repo_root)),
        ("database", lambda: infra.database_checks(settings, db_url, timeout_s)),
        ("alerts", lambda: alerts.alert_checks(settings, db_url, timeout_s, secrets, dry_run_channels)),
        ("testing", lambda: infra.load_test_checks(results_dir, max_result_age_days)),
        ("outputs", lambda: infra.cog_checks(db_url, timeout_s)),
    ]
    if server:
        tasks += [("server", t) for t in web.server_tasks(settings, server.rstrip("/"), timeout_s)]
    with ThreadPoolExecutor(max_workers=min(16, len(tasks))) as pool:
        results = list(pool.map(lambda task: _guarded(*task), tasks))
    checks = [c for group in results for c in group]
    order = {g: i for i, g in enumerate(GROUPS)}
    checks.sort(key=lambda c: order.get(c.group, len(GROUPS)))  # stable: within a group, as made
    from eodeploy._secrets import mask_url

    report = Report(
        checks,
        time.perf_counter() - started,
        {"repository": str(repo_root), "server": server, "database": mask_url(db_url)},
    )
    return report.masked(secrets)


def _guarded(group: str, task: Callable[[], list[Check]]) -> list[Check]:
    """A check that breaks is a failed check with its reason, never a traceback."""
    try:
        return task()
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
        return [
            Check(group, f"{group} checks", FAIL, f"the check itself failed: {type(exc).__name__}: {exc}")
        ]


# --- model packages ------------------------------------------------------------------------------
def model_checks(settings: Settings, repo_root: Path) -> list[Check]:
    """For each model: its served versions' accuracy, item, sha256, reference statistics and input
    scaling; then whether an optimised version and an export exist."""
    from eodeploy.package.repository import ModelPackage, ModelRepository
    from eodeploy.serve.policy import ServingConfig, VersionPolicy

    repo = ModelRepository(repo_root)
    names = repo.names()
    if not names:
        return [
            Check(
                "model",
                "repository",
                FAIL,
                f"no model packages in {repo_root}",
                "train one (eodeploy train) or import one (eodeploy import MODEL), or pass --repo DIR",
            )
        ]
    checks: list[Check] = []
    try:
        default_policy = VersionPolicy.parse(settings.version_policy)
    except EodeployError as exc:
        checks.append(Check("model", "version policy", FAIL, str(exc), "fix EODEPLOY_VERSION_POLICY"))
        default_policy = VersionPolicy()
    for name in names:
        available = repo.versions(name)
        try:
            served = ServingConfig.read(repo.root / name, default_policy).wanted(available)
        except EodeployError as exc:
            checks.append(
                Check(
                    "model",
                    f"{name} serving.json",
                    FAIL,
                    str(exc),
                    f"fix or rewrite it: eodeploy models route {name} ...",
                )
            )
            served = available[-1:]
        for v in served:
            label = f"{name} v{v}"
            try:
                pkg = ModelPackage(repo.root / name / str(v))
            except EodeployError as exc:
                checks.append(
                    Check(
                        "model",
                        f"{label} package",
                        FAIL,
                        str(exc),
                        f"re-import the model or remove the version: eodeploy models remove {name} {v}",
                    )
                )
                continue
            checks += version_checks(pkg)
        checks += optimisation_checks(repo, name, available)
    return checks


def _prop(pkg: Any, key: str) -> Any:
    value = pkg.properties.get(key)
    if isinstance(value, str):  # some importers store JSON documents as strings
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def version_checks(pkg: Any) -> list[Check]:
    from eodeploy.package.validate import mlm_errors, validate_item

    label, ref = _label(pkg)  # the folder's number: what clients ask for
    out: list[Check] = []
    # MLM item
    errors = mlm_errors(pkg.item)
    if errors:
        out.append(
            Check(
                "model",
                f"{label} MLM item",
                FAIL,
                f"item.json fails the STAC MLM schema: {'; '.join(errors[:2])}",
                f"fix {pkg.path / 'item.json'} or re-create the package (eodeploy import); "
                f"check with: eodeploy models validate {ref}",
            )
        )
    else:
        try:
            validate_item(pkg.item)
            _ = pkg.spec
            out.append(Check("model", f"{label} MLM item", OK, "valid STAC Item with MLM v1.5.2 fields"))
        except EodeployError as exc:
            out.append(
                Check(
                    "model",
                    f"{label} MLM item",
                    FAIL,
                    str(exc),
                    f"re-create the package (eodeploy import); check with: eodeploy models validate {ref}",
                )
            )
    # sha256
    try:
        pkg.verify()
        out.append(Check("model", f"{label} sha256", OK, f"model.onnx matches {pkg.recorded_sha256[:12]}…"))
    except EodeployError as exc:
        out.append(
            Check(
                "model",
                f"{label} sha256",
                FAIL,
                str(exc).split(": the file")[0],
                f"restore model.onnx from a backup or re-import the model; then eodeploy models validate {ref}",
            )
        )
    out.append(accuracy_check(pkg))
    out.append(reference_check(pkg))
    out.append(scaling_check(pkg))
    return out


def _label(pkg: Any) -> tuple[str, str]:
    """``name vN`` and ``name:N`` of a package, N its folder."""
    return f"{pkg.name} v{pkg.path.name}", f"{pkg.name}:{pkg.path.name}"


def accuracy_check(pkg: Any) -> Check:
    label, ref = _label(pkg)
    metrics = _prop(pkg, "eodeploy:metrics")
    if not isinstance(metrics, dict) or "accuracy" not in metrics:
        evaluations = _prop(pkg, "eodeploy:evaluations") or {}
        tests = {k: e for k, e in evaluations.items() if k.endswith(":test") and "accuracy" in e}
        if not tests:
            return Check(
                "model",
                f"{label} accuracy",
                WARN,
                "not evaluated on a test split",
                f"eodeploy evaluate {ref} DATA (records it in the package)",
            )
        key, metrics = next(iter(tests.items()))
        metrics = {**metrics, "split": key}
    acc, split, n = float(metrics["accuracy"]), metrics.get("split", "?"), metrics.get("n")
    on = f"on its {split} split" + (f" ({n} patches)" if n else "")
    if split not in ("test",) and not str(split).endswith(":test"):
        return Check(
            "model",
            f"{label} accuracy",
            WARN,
            f"{pct(acc)} {on}, not a held-out test split",
            f"eodeploy evaluate {ref} DATA --split test",
        )
    if acc > MIN_ACCURACY:
        return Check("model", f"{label} accuracy", OK, f"{pct(acc)} {on} > {pct(MIN_ACCURACY)}")
    return Check(
        "model",
        f"{label} accuracy",
        FAIL,
        f"{pct(acc)} {on}, not above {pct(MIN_ACCURACY)}",
        f"retrain (eodeploy train --init-from {ref} ...) or serve a better version "
        f"(eodeploy models route {pkg.name} --stable N)",
    )


def reference_check(pkg: Any) -> Check:
    label = _label(pkg)[0]
    ref = _prop(pkg, "eodeploy:reference_stats")
    fix = (
        "retrain with eodeploy train, which records them (imported models carry none); "
        "until then drift is not scored for this model"
    )
    if not isinstance(ref, dict) or not ref.get("bands"):
        return Check("model", f"{label} reference stats", WARN, "no reference statistics", fix)
    try:
        bands = pkg.spec.bands
    except EodeployError:
        bands = list(ref["bands"])
    lacking = [
        b for b in bands if not set(DRIFT_QUANTILES) <= set((ref["bands"].get(b) or {}).get("quantiles", {}))
    ]
    if lacking:
        return Check(
            "model",
            f"{label} reference stats",
            WARN,
            f"band(s) {', '.join(lacking)} lack the quartiles drift needs ({', '.join(DRIFT_QUANTILES)})",
            fix,
        )
    freq = "with class frequencies" if ref.get("class_frequencies") else "no class frequencies"
    status = OK if ref.get("class_frequencies") else WARN
    return Check(
        "model",
        f"{label} reference stats",
        status,
        f"{len(bands)} bands with quantiles from {ref.get('n_samples', '?')} patches, {freq}",
        None if status == OK else fix,
    )


def scaling_check(pkg: Any) -> Check:
    """The package's input units and scaling against what Sentinel-2 files hold: digital numbers
    with the +1000 offset of processing baseline >= 04.00 removed (``data.offsets``)."""
    from eodeploy.data.offsets import baseline_offset

    label = _label(pkg)[0]
    name = f"{label} input scaling"
    try:
        spec = pkg.spec
    except EodeployError as exc:
        return Check("model", name, FAIL, str(exc), "re-create the package (eodeploy import)")
    props = {k: str(v) for k, v in pkg.properties.items() if isinstance(v, str | int | float)}
    declared = baseline_offset(props)
    ref = (_prop(pkg, "eodeploy:reference_stats") or {}).get("bands") or {}
    if spec.units is None:
        return Check(
            "model",
            name,
            WARN,
            "no eodeploy:input_units: inputs are passed on as they come, so reflectance, 8-bit "
            "renderings or the +1000 offset of baseline 04.00 reach the network unconverted",
            f"record the units the model was trained on (dn, reflectance or rgb8) in "
            f"{label}'s item.json as eodeploy:input_units",
        )
    scaling = {b: s for b, s in zip(spec.bands, spec.value_scaling) if s.get("type") == "z-score"}
    shifts = [
        (float(s["mean"]) - float(ref[b]["mean"])) / max(float(ref[b]["std"]), 1e-6)
        for b, s in scaling.items()
        if b in ref and "mean" in ref[b]
    ]
    problems: list[str] = []
    if shifts and sorted(abs(x) for x in shifts)[len(shifts) // 2] > 0.5:
        diffs = [float(scaling[b]["mean"]) - float(ref[b]["mean"]) for b in scaling if b in ref]
        mid = sorted(diffs)[len(diffs) // 2]
        offset = " (the +1000 DN offset of processing baseline 04.00)" if abs(abs(mid) - 1000) < 250 else ""
        problems.append(f"its z-score means sit {mid:+.0f} from the training data's{offset}")
    medians = [float(r["quantiles"]["p50"]) for r in ref.values() if "quantiles" in r]
    lows = [float(r.get("min", 0)) for r in ref.values()]
    if spec.units == "dn" and lows and min(lows) >= 1000 and len(lows) > 3:
        problems.append(
            "every training value is >= 1000 DN: the data kept the +1000 offset of baseline 04.00"
        )
    if spec.units == "reflectance" and medians and max(medians) > 3:
        problems.append("units say reflectance (0-1) but training medians reach " + f"{max(medians):.0f}")
    if spec.units == "rgb8" and medians and max(medians) > 255:
        problems.append("units say 8-bit but training medians exceed 255")
    if problems:
        return Check(
            "model",
            name,
            FAIL,
            "; ".join(problems),
            "retrain on data read through eodeploy (data.offsets removes the baseline offset "
            "declared by BOA_ADD_OFFSET / s2:processing_baseline), so scaling and inputs agree",
        )
    extra = f"; the package declares offset {declared:+.0f}" if declared else ""
    return Check(
        "model",
        name,
        OK,
        f"units {spec.units}, z-score scaling matches the training data (files of baseline >= 04.00 "
        f"lose their +1000 DN offset on reading){extra}",
    )


_OPTIMISED = ("int8", "fp16")


def optimisation_checks(repo: Any, name: str, versions: Iterable[int]) -> list[Check]:
    """An INT8/FP16 version derived from another (eodeploy optimize), and TFLite/Triton exports."""
    optimised: list[str] = []
    tflite: list[int] = []
    for v in versions:
        try:
            pkg = repo.get(name, v)
        except EodeployError:
            continue
        method = str((_prop(pkg, "eodeploy:optimization") or {}).get("method", ""))
        if method.startswith(_OPTIMISED):
            optimised.append(f"v{v} {method}")
        if pkg.properties.get("eodeploy:tflite") or (pkg.path / "model.tflite").is_file():
            tflite.append(v)
    latest = max(versions, default=0)
    out = []
    if optimised:
        out.append(Check("model", f"{name} optimised", OK, ", ".join(optimised)))
    else:
        out.append(
            Check(
                "model",
                f"{name} optimised",
                WARN,
                "no INT8/FP16 version (optional: if latency or size needs it)",
                f"eodeploy optimize {name}:{latest} --int8 (writes a new version with its measured accuracy)",
            )
        )
    triton = Path("triton-models") / name / "config.pbtxt"
    if tflite or triton.is_file():
        found = [f"TFLite in v{', v'.join(map(str, tflite))}"] if tflite else []
        found += [f"Triton at {triton.parent}"] if triton.is_file() else []
        out.append(Check("model", f"{name} exports", OK, "ONNX; " + "; ".join(found)))
    else:
        out.append(
            Check(
                "model",
                f"{name} exports",
                WARN,
                "ONNX only (TFLite and Triton exports are optional)",
                f"eodeploy export {name}:{latest} --format tflite (or --format triton)",
            )
        )
    return out
