"""The objects of one provisioned terminal, as plain JSON-able dicts (no I/O).

One ServiceAccount is the parent: it carries the session's state (user, heartbeat,
expiry) in annotations, and every other object names it in ``ownerReferences``, so
deleting it deletes the session (the garbage collector removes the rest).

========================  =====================================================
object                    why
========================  =====================================================
ServiceAccount (parent)   the terminal's identity; state annotations (user,
                          heartbeat, expires-at, max-expires-at)
RoleBinding               binds the ServiceAccount to the configured role, in the
                          target namespace only
Secret                    a kubeconfig with a short-lived TokenRequest token
NetworkPolicy             the pod: no ingress; egress to DNS and the API server
Pod                       the tools image, non-root, no privilege escalation, all
                          capabilities dropped, no service-account token
                          automount, limits, ``activeDeadlineSeconds`` =
                          max_expiry (extensions cannot raise it later)
========================  =====================================================

The node-debug variant (``node`` set) is the parent and one Pod only, shaped like the pod
``kubectl debug node/<node> --profile=sysadmin`` creates: pinned to the node
(``nodeName``), ``hostPID``, ``hostNetwork``, ``hostIPC``, the host's ``/`` mounted
read-write at ``/host``, a privileged container, tolerating every taint. No RoleBinding,
token or kubeconfig (root on the node needs no API credentials from the gateway), and no
NetworkPolicy (it does not apply to host-network pods). Its objects carry the label
``terminal-proxy.dev/variant: node-debug`` and the parent the annotation
``terminal-proxy.dev/node``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ...config import IPNetwork, KubernetesProvisionConfig

__all__ = [
    "ANNOTATION_EXPIRES",
    "ANNOTATION_HEARTBEAT",
    "ANNOTATION_MAX_EXPIRES",
    "ANNOTATION_NODE",
    "ANNOTATION_USER",
    "CONTAINER",
    "LABEL_SESSION",
    "LABEL_USER",
    "LABEL_VARIANT",
    "MANAGED_SELECTOR",
    "NODE_DEBUG",
    "SessionObjects",
    "user_label",
]

PREFIX = "terminal-proxy.dev"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_SESSION = f"{PREFIX}/session"
LABEL_USER = f"{PREFIX}/user-hash"
ANNOTATION_USER = f"{PREFIX}/user"
ANNOTATION_HEARTBEAT = f"{PREFIX}/heartbeat"
ANNOTATION_EXPIRES = f"{PREFIX}/expires-at"
# How far extensions may push expires-at (creation + max_expiry).
ANNOTATION_MAX_EXPIRES = f"{PREFIX}/max-expires-at"
# The node-debug variant: a label on all its objects, the node's name on the parent.
LABEL_VARIANT = f"{PREFIX}/variant"
NODE_DEBUG = "node-debug"
ANNOTATION_NODE = f"{PREFIX}/node"
HOST_MOUNT = "/host"
MANAGED_SELECTOR = f"{LABEL_MANAGED}=terminal-proxy,{LABEL_COMPONENT}=terminal-session"
CONTAINER = "terminal"
_KUBECONFIG_DIR = "/etc/terminal-proxy"


def user_label(user: str) -> str:
    """A label-safe stand-in for the user name (labels allow 63 [A-Za-z0-9._-])."""
    return hashlib.sha256(user.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class SessionObjects:
    """Builds the manifests of session ``session_id`` for ``user`` in ``namespace``."""

    config: KubernetesProvisionConfig
    session_id: str
    namespace: str
    user: str
    now: float
    api_server_cidrs: tuple[IPNetwork, ...] = ()
    # The node-debug variant: the node the pod runs on (None: a normal terminal).
    node: str | None = None

    @property
    def name(self) -> str:
        return f"terminal-{self.session_id}"

    @property
    def expires_at(self) -> float:
        return self.now + self.config.expiry

    @property
    def max_expires_at(self) -> float:
        return self.now + self.config.max_expiry

    def labels(self) -> dict[str, str]:
        labels = {
            LABEL_MANAGED: "terminal-proxy",
            LABEL_COMPONENT: "terminal-session",
            LABEL_SESSION: self.session_id,
            LABEL_USER: user_label(self.user),
        }
        if self.node is not None:
            labels[LABEL_VARIANT] = NODE_DEBUG
        return labels

    def _meta(self, owner: dict[str, Any] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": self.labels(),
        }
        if owner is not None:
            meta["ownerReferences"] = [owner]
        return meta

    def parent(self) -> dict[str, Any]:
        meta = self._meta(None)
        meta["annotations"] = {
            ANNOTATION_USER: self.user,
            ANNOTATION_HEARTBEAT: str(int(self.now)),
            ANNOTATION_EXPIRES: str(int(self.expires_at)),
            ANNOTATION_MAX_EXPIRES: str(int(self.max_expires_at)),
        }
        if self.node is not None:
            meta["annotations"][ANNOTATION_NODE] = self.node
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            # The pod mounts a kubeconfig instead; no token is ever automounted.
            "automountServiceAccountToken": False,
        }

    def owner(self, uid: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "name": self.name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }

    def role_binding(self, owner: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": self._meta(owner),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": self.config.role_kind,
                "name": self.config.role_name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": self.name, "namespace": self.namespace}
            ],
        }

    def token_request(self) -> dict[str, Any]:
        # The API server's minimum is 10 minutes; a little longer than the terminal can
        # live (extensions included). Deleting the ServiceAccount invalidates it sooner.
        seconds = max(600, int(self.config.max_expiry) + 300)
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }

    def kubeconfig_secret(
        self, owner: dict[str, Any], token: str, ca_pem: str | None
    ) -> dict[str, Any]:
        cluster: dict[str, Any] = {"server": self.config.api_server_url}
        if ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(ca_pem.encode()).decode()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": self.name, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "terminal",
                    "context": {
                        "cluster": "cluster",
                        "user": self.name,
                        "namespace": self.namespace,
                    },
                }
            ],
            "current-context": "terminal",
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._meta(owner),
            "type": "Opaque",
            "stringData": {"kubeconfig": json.dumps(kubeconfig)},
        }

    def network_policy(self, owner: dict[str, Any]) -> dict[str, Any]:
        dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        egress: list[dict[str, Any]] = [
            {
                "to": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": dns_ports,
            }
        ]
        if self.api_server_cidrs:
            egress.append(
                {
                    "to": [{"ipBlock": {"cidr": str(cidr)}} for cidr in self.api_server_cidrs],
                    "ports": [
                        {"protocol": "TCP", "port": port} for port in self.config.api_server_ports
                    ],
                }
            )
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self._meta(owner),
            "spec": {
                "podSelector": {"matchLabels": {LABEL_SESSION: self.session_id}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": egress,
            },
        }

    def _pod(self, owner: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """A terminal pod: what every variant shares, then ``spec``."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self._meta(owner),
            "spec": {
                "serviceAccountName": self.name,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "restartPolicy": "Never",
                # The kubelet ends the pod even if no gateway is left to do it. A pod's
                # deadline can only be lowered, so it is the ceiling extensions may reach;
                # the cleanup loop enforces the (extendable) expiry before it.
                "activeDeadlineSeconds": int(self.config.max_expiry) + 60,
                "terminationGracePeriodSeconds": 5,
                **spec,
            },
        }

    def pod(self, owner: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        uid = config.run_as_user
        return self._pod(
            owner,
            {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": uid,
                    "runAsGroup": uid,
                    "fsGroup": uid,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": config.image,
                        "imagePullPolicy": config.image_pull_policy,
                        "command": list(config.command),
                        "stdin": True,
                        "tty": True,
                        "env": [{"name": "KUBECONFIG", "value": f"{_KUBECONFIG_DIR}/kubeconfig"}],
                        "volumeMounts": [
                            {"name": "kubeconfig", "mountPath": _KUBECONFIG_DIR, "readOnly": True}
                        ],
                        "resources": {
                            "requests": {
                                "cpu": config.cpu_request,
                                "memory": config.memory_request,
                            },
                            "limits": {"cpu": config.cpu_limit, "memory": config.memory_limit},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "privileged": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
                "volumes": [
                    {
                        "name": "kubeconfig",
                        "secret": {"secretName": self.name, "defaultMode": 0o440},
                    }
                ],
            },
        )

    def node_debug_pod(self, owner: dict[str, Any]) -> dict[str, Any]:
        """The node-debug pod: what ``kubectl debug node/<node> --profile=sysadmin`` makes."""
        assert self.node is not None
        config = self.config
        return self._pod(
            owner,
            {
                # On exactly this node, whatever its taints; in the host's namespaces.
                "nodeName": self.node,
                "tolerations": [{"operator": "Exists"}],
                "hostPID": True,
                "hostNetwork": True,
                "hostIPC": True,
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": config.node_debug.image or config.image,
                        "imagePullPolicy": config.image_pull_policy,
                        "command": list(config.command),
                        "stdin": True,
                        "tty": True,
                        "volumeMounts": [{"name": "host-root", "mountPath": HOST_MOUNT}],
                        "resources": {
                            "requests": {
                                "cpu": config.cpu_request,
                                "memory": config.memory_request,
                            },
                            "limits": {"cpu": config.cpu_limit, "memory": config.memory_limit},
                        },
                        "securityContext": {"privileged": True},
                    }
                ],
                "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
            },
        )
