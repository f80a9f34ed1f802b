"""The Kubernetes and KServe manifests, checked offline: rendered by ``kubectl kustomize``, valid for
Kubernetes 1.29-1.33 (``kubernetes-validate --strict``), the InferenceService against its schema,
and the invariants that tie them to the server: the shutdown budget, probes on real routes, ports
the settings open, non-root and read-only, requests = limits, selectors that select, and an HPA
metric made from a metric the server exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["base", "overlays/production", "overlays/single"]
VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("EODEPLOY_REQUIRE_EXTRAS") == "1":
            pytest.fail(
                f"{name} is not installed (kubectl: the machine's; kubernetes-validate: pip, dev extra)"
            )
        pytest.skip(f"{name} is not installed")
    return path


def render(where: str) -> list[dict[str, Any]]:
    out = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / where)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kind(docs: list[dict[str, Any]], k: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == k]


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [d["spec"]["template"]["spec"] for d in kind(docs, "Deployment")]
    specs += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in kind(docs, "CronJob")]
    return specs


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return kind(docs, "ConfigMap")[0]["data"]


def kserve() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())


@pytest.mark.parametrize("where", OVERLAYS)
def test_manifests_are_valid_kubernetes(where: str, tmp_path: Path) -> None:
    docs = render(where)
    rendered = tmp_path / "all.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    tool = _tool("kubernetes-validate")
    for v in VERSIONS:
        r = subprocess.run([tool, "--strict", "-k", v, str(rendered)], capture_output=True, text=True)
        assert r.returncode == 0, f"Kubernetes {v}:\n{r.stdout}\n{r.stderr}"
    example = K8S / "base" / "secret.example.yaml"
    r = subprocess.run([tool, "--strict", "-k", VERSIONS[-1], str(example)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_typo_fails_validation(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field is rejected."""
    bad = render("base")
    kind(bad, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    rendered = tmp_path / "bad.yaml"
    rendered.write_text(yaml.safe_dump_all(bad))
    r = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.33", str(rendered)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0


def grace_budget(pod: dict[str, Any], env: dict[str, str]) -> tuple[int, float]:
    """(terminationGracePeriodSeconds, preStop + drain delay + HTTP drain + gRPC grace + 5 s)."""
    c = pod["containers"][0]
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = float(env.get("EODEPLOY_DRAIN_TIMEOUT_S", 10))  # Settings' default
    # gRPC shares the HTTP drain timeout in eodeploy; counted twice, as if it did not.
    needed = pre + float(env.get("EODEPLOY_DRAIN_DELAY_S", 0)) + drain + drain + 5
    return pod.get("terminationGracePeriodSeconds", 30), needed


@pytest.mark.parametrize("where", OVERLAYS)
def test_termination_grace_exceeds_prestop_plus_drain(where: str) -> None:
    docs = render(where)
    pod = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    tgps, needed = grace_budget(pod, config(docs))
    assert tgps > needed, (tgps, needed)


def test_kserve_termination_grace_exceeds_prestop_plus_drain() -> None:
    pred = kserve()["spec"]["predictor"]
    env = {e["name"]: e["value"] for e in pred["containers"][0]["env"] if "value" in e}
    tgps, needed = grace_budget(pred, env)
    assert tgps > needed, (tgps, needed)
    # and the check bites: a longer drain breaks it
    assert (
        not grace_budget(pred, {**env, "EODEPLOY_DRAIN_TIMEOUT_S": "30"})[0]
        > grace_budget(pred, {**env, "EODEPLOY_DRAIN_TIMEOUT_S": "30"})[1]
    )


def _routes() -> set[str]:
    from eodeploy.settings import Settings
    from eodeploy.web.app import create_app

    app = create_app(Settings(model_repo=ROOT / "models"), grpc=False)
    return set(app.openapi()["paths"])


def test_probes_ports_and_security_match_the_server() -> None:
    from eodeploy.settings import Settings

    routes, fields = _routes(), set(Settings.model_fields)
    containers = [
        (c, config(d)) for w in OVERLAYS for d in [render(w)] for p in pod_specs(d) for c in p["containers"]
    ]
    pred = kserve()["spec"]["predictor"]
    kenv = {e["name"]: e.get("value", "") for e in pred["containers"][0]["env"]}
    containers.append((pred["containers"][0], kenv))
    for c, env in containers:
        env = {**env, **{e["name"]: e.get("value", "") for e in c.get("env", [])}}
        for key in env:  # every setting named is one the server reads
            if key == "PROTOCOL":  # KServe's, not ours
                continue
            assert key.startswith("EODEPLOY_") and key.removeprefix("EODEPLOY_").lower() in fields, key
        ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                get = c[probe]["httpGet"]
                assert get["path"] in routes, get
                port = ports.get(get["port"], get["port"])
                assert port == int(env["EODEPLOY_PORT"]), (probe, port)
        if c.get("ports") and "EODEPLOY_GRPC_PORT" in env and env["EODEPLOY_GRPC_PORT"] != "0":
            assert ports["grpc"] == int(env["EODEPLOY_GRPC_PORT"])
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] == c["resources"]["limits"]
        assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))  # HOME on a RO root
    for w in OVERLAYS:
        for p in pod_specs(render(w)):
            assert p["securityContext"]["runAsNonRoot"] and p["securityContext"]["runAsUser"] != 0
            assert p["automountServiceAccountToken"] is False
            assert p["enableServiceLinks"] is False  # else Service env vars land in EODEPLOY_*


def test_selectors_select_and_the_hpa_scales_the_deployment() -> None:
    docs = render("overlays/production")
    dep = kind(docs, "Deployment")[0]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for d in kind(docs, "Service"):
        assert d["spec"]["selector"].items() <= labels.items()
    pdb = kind(docs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    hpa = kind(docs, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for p in pod_specs(docs)
        for v in p["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims <= {d["metadata"]["name"] for d in kind(docs, "PersistentVolumeClaim")}


def test_the_hpa_queue_metric_comes_from_a_metric_the_server_exports() -> None:
    from eodeploy.serve.metrics import ServerMetrics

    hpa = kind(render("overlays/production"), "HorizontalPodAutoscaler")[0]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    rules = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    produced = {r["name"]["as"] for r in rules}
    assert wanted <= produced
    exported = {s.name for f in ServerMetrics().registry.collect() for s in f.samples} | {
        f.name + suffix for f in ServerMetrics().registry.collect() for suffix in ("_sum", "_count")
    }
    for r in rules:
        for series in ("_sum", "_count"):
            name = r["name"]["matches"].strip("^$").removesuffix("_sum") + series
            assert name in exported, name
            assert name in r["metricsQuery"]


def test_the_inference_service_matches_kserve_schema() -> None:
    import jsonschema

    schema = json.loads((ROOT / "deploy" / "kserve" / "inferenceservice.schema.json").read_text())
    isvc = kserve()
    jsonschema.validate(isvc, schema)
    assert isvc["spec"]["predictor"]["containers"][0]["name"] == "kserve-container"  # KServe's name
    typo = json.loads(json.dumps(isvc))
    typo["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)
