"""The cluster behind the fake kube-apiserver: RBAC, impersonation, reviews and objects.

Plugged into :class:`tests.fakes.kube_apiserver.FakeKubeApiServer` with ``cluster=``. It
serves the REST subset terminal-proxy's Kubernetes routes and provisioned terminals use,
as strictly as the real server where it matters:

* **RBAC**: every request to a resource here is authorized: static rules (``rbac.allow``)
  plus RoleBindings created through the API (binding ``cluster_roles`` in a namespace).
  A denial is the real 403 Status (``pods "x" is forbidden: User "u" cannot create ...``).
* **Impersonation** (``Impersonate-User`` / ``Impersonate-Group``): only for requesters
  allowed to ``impersonate`` ``users`` / ``groups``; otherwise the real 403; groups without
  a user is the real 500. The impersonated user gets ``system:authenticated`` added.
* **SubjectAccessReview** and **SelfSubjectAccessReview** (authorization.k8s.io/v1), with
  the real validation (exactly one of resource/non-resource attributes, user or groups).
* **Objects**: ServiceAccounts (+ ``token`` TokenRequest, which mints a real token for
  ``system:serviceaccount:NS:NAME``), Secrets, ConfigMaps, Pods, RoleBindings,
  NetworkPolicies: create / get / list (label and ``metadata.name`` field selectors) /
  watch / merge-patch / delete, with resourceVersions, uids, AlreadyExists/NotFound
  Statuses and garbage collection by ``ownerReferences`` (background, like the real GC).
* **Pods** become exec-able :class:`FakePod` s; ``pull_failing_images`` never start
  (``ErrImagePull``), ``pending_images`` stay Pending; ``pod_quota`` limits pods per
  namespace with the real "exceeded quota" 403.
* **Nodes** (cluster-scoped; ``add_node``): get / list / watch / delete. A pod whose
  ``nodeName`` names no node stays Pending, as no kubelet picks it up.
* **Pod Security admission**: namespaces in ``pod_security_baseline`` refuse pods with
  host namespaces, privileged containers or hostPath volumes with the real 403.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeCluster", "FakeRbac", "Rule"]

_RBAC = "rbac.authorization.k8s.io"
_NETWORKING = "networking.k8s.io"
_AUTHZ = "authorization.k8s.io"
_CREATED = "2026-01-01T00:00:00Z"

# (group, plural) → (apiVersion, kind)
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("", "serviceaccounts"): ("v1", "ServiceAccount"),
    ("", "secrets"): ("v1", "Secret"),
    ("", "configmaps"): ("v1", "ConfigMap"),
    ("", "pods"): ("v1", "Pod"),
    (_RBAC, "rolebindings"): (f"{_RBAC}/v1", "RoleBinding"),
    (_NETWORKING, "networkpolicies"): (f"{_NETWORKING}/v1", "NetworkPolicy"),
    ("", "nodes"): ("v1", "Node"),
}
_CLUSTER_SCOPED = frozenset({("", "nodes")})


@dataclass(frozen=True)
class Rule:
    """Like a Role rule: verbs on resources ("pods", "pods/exec", "*") in API groups."""

    verbs: frozenset[str]
    resources: frozenset[str]
    groups: frozenset[str] = frozenset({""})
    namespaces: frozenset[str] | None = None  # None: every namespace (and cluster scope)
    names: frozenset[str] | None = None

    def allows(self, verb: str, group: str, resource: str, namespace: str, name: str) -> bool:
        return (
            (verb in self.verbs or "*" in self.verbs)
            and (group in self.groups or "*" in self.groups)
            and (resource in self.resources or "*" in self.resources)
            and (self.namespaces is None or namespace in self.namespaces)
            and (self.names is None or name in self.names)
        )


@dataclass
class FakeRbac:
    """Static grants to users and groups; ``cluster_roles`` are what RoleBindings name."""

    grants: list[tuple[str, Rule]] = field(default_factory=list)
    cluster_roles: dict[str, list[Rule]] = field(default_factory=dict)

    def allow(
        self,
        subject: str,
        verbs: Iterable[str],
        resources: Iterable[str],
        *,
        groups: Iterable[str] = ("",),
        namespaces: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
    ) -> tuple[str, Rule]:
        """Grant ``subject`` ("alice", or "group:devs") a rule; returns a handle to revoke."""
        rule = Rule(
            frozenset(verbs),
            frozenset(resources),
            frozenset(groups),
            None if namespaces is None else frozenset(namespaces),
            None if names is None else frozenset(names),
        )
        grant = (subject, rule)
        self.grants.append(grant)
        return grant

    def revoke(self, grant: tuple[str, Rule]) -> None:
        self.grants.remove(grant)


def _resource(resource: str, subresource: str) -> str:
    return f"{resource}/{subresource}" if subresource else resource


def _status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return web.json_response(body, status=code)


def _forbidden(
    user: str, verb: str, group: str, resource: str, namespace: str, name: str
) -> web.Response:
    plural = resource.split("/")[0]
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    subject = f'{plural} "{name}" is forbidden' if name else f"{plural} is forbidden"
    return _status(
        403,
        "Forbidden",
        f'{subject}: User "{user}" cannot {verb} resource "{resource}" in API group '
        f'"{group}" {where}',
        {"name": name, "group": group, "kind": plural}
        if name
        else {"group": group, "kind": plural},
    )


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _baseline_violations(spec: dict[str, Any]) -> list[str]:
    """What the Pod Security "baseline" level refuses in a pod (the subset the fake checks),
    worded like the API server's admission message."""
    violations = []
    host = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    if host:
        violations.append(f"host namespaces ({', '.join(host)})")
    privileged = [
        f'container "{c.get("name")}" must not set securityContext.privileged=true'
        for c in spec.get("containers") or []
        if (c.get("securityContext") or {}).get("privileged")
    ]
    if privileged:
        violations.append(f"privileged ({', '.join(privileged)})")
    paths = [f'"{v.get("name")}"' for v in spec.get("volumes") or [] if "hostPath" in v]
    if paths:
        volume = "volume" if len(paths) == 1 else "volumes"
        violations.append(f"hostPath volumes ({volume} {', '.join(paths)})")
    return violations


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


# Protobuf (application/vnd.kubernetes.protobuf): kubectl sends access reviews this way.
_PROTOBUF = "application/vnd.kubernetes.protobuf"
_PROTOBUF_MAGIC = b"k8s\x00"
_RESOURCE_FIELDS = {
    1: "namespace",
    2: "verb",
    3: "group",
    4: "version",
    5: "resource",
    6: "subresource",
    7: "name",
}


def _protobuf_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of one message: varints and length-delimited fields only."""
    fields: list[tuple[int, int | bytes]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.append((number, varint()))
        elif wire == 2:
            size = varint()
            fields.append((number, data[i : i + size]))
            i += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return fields


def _protobuf_review(data: bytes) -> dict[str, Any]:
    """A (Self)SubjectAccessReview in the Kubernetes protobuf envelope, as its JSON form."""
    if not data.startswith(_PROTOBUF_MAGIC):
        raise ValueError("missing the k8s protobuf magic prefix")
    envelope = dict(_protobuf_fields(data[len(_PROTOBUF_MAGIC) :]))
    type_meta = {n: v for n, v in _protobuf_fields(envelope[1])}  # type: ignore[arg-type]
    body: dict[str, Any] = {
        "apiVersion": type_meta.get(1, b"").decode(),  # type: ignore[union-attr]
        "kind": type_meta.get(2, b"").decode(),  # type: ignore[union-attr]
        "spec": {},
    }
    spec: dict[str, Any] = body["spec"]
    for number, value in _protobuf_fields(envelope[2]):  # type: ignore[arg-type]
        if number != 2 or not isinstance(value, bytes):
            continue
        for field_number, field_value in _protobuf_fields(value):
            assert isinstance(field_value, bytes)
            if field_number == 1:
                spec["resourceAttributes"] = {
                    _RESOURCE_FIELDS[n]: v.decode()  # type: ignore[union-attr]
                    for n, v in _protobuf_fields(field_value)
                    if n in _RESOURCE_FIELDS
                }
            elif field_number == 2:
                attrs = dict(_protobuf_fields(field_value))
                spec["nonResourceAttributes"] = {
                    "path": attrs.get(1, b"").decode(),  # type: ignore[union-attr]
                    "verb": attrs.get(2, b"").decode(),  # type: ignore[union-attr]
                }
            elif field_number == 3 and body["kind"] == "SubjectAccessReview":
                spec["user"] = field_value.decode()
            elif field_number == 4 and body["kind"] == "SubjectAccessReview":
                spec.setdefault("groups", []).append(field_value.decode())
    return body


@dataclass
class _Watcher:
    group: str
    plural: str
    namespace: str
    labels: str
    name: str
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = field(default_factory=asyncio.Queue)


class FakeCluster:
    """RBAC + objects; ``FakeKubeApiServer(cluster=FakeCluster(...))``."""

    def __init__(
        self,
        rbac: FakeRbac | None = None,
        *,
        pull_failing_images: Iterable[str] = (),
        pending_images: Iterable[str] = (),
        pod_quota: dict[str, int] | None = None,
        pod_security_baseline: Iterable[str] = (),
    ) -> None:
        self.rbac = rbac or FakeRbac()
        self.pull_failing_images = set(pull_failing_images)
        self.pending_images = set(pending_images)
        self.pod_quota = dict(pod_quota or {})
        self.pod_security_baseline = set(pod_security_baseline)
        # (group, plural, namespace, name) → object
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._version = 1000
        self._watchers: list[_Watcher] = []
        # Tokens minted by TokenRequest → service account user.
        self.minted: dict[str, str] = {}
        # Every SubjectAccessReview answered: (spec, allowed).
        self.reviews: list[tuple[dict[str, Any], bool]] = []
        # Set on every change (tests wait on ``changed`` rather than sleeping).
        self.changed = asyncio.Condition()
        self.server: Any = None  # the FakeKubeApiServer, set when plugged in

    # ---- RBAC --------------------------------------------------------------------------

    def allowed(
        self,
        user: str,
        groups: Iterable[str],
        verb: str,
        group: str,
        resource: str,
        namespace: str = "",
        name: str = "",
    ) -> bool:
        subjects = {user, *(f"group:{g}" for g in groups)}
        for subject, rule in self.rbac.grants:
            if subject in subjects and rule.allows(verb, group, resource, namespace, name):
                return True
        if not namespace:
            return False
        for (g, plural, ns, _), binding in self.objects.items():
            if g != _RBAC or plural != "rolebindings" or ns != namespace:
                continue
            if not any(self._subject_matches(s, ns, subjects) for s in binding.get("subjects", [])):
                continue
            role = binding.get("roleRef", {}).get("name", "")
            for rule in self.rbac.cluster_roles.get(role, []):
                if rule.allows(verb, group, resource, namespace, name):
                    return True
        return False

    @staticmethod
    def _subject_matches(subject: dict[str, Any], namespace: str, subjects: set[str]) -> bool:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or namespace
            return f"system:serviceaccount:{ns}:{subject.get('name')}" in subjects
        if kind == "User":
            return subject.get("name") in subjects
        if kind == "Group":
            return f"group:{subject.get('name')}" in subjects
        return False

    def impersonate(
        self, user: str, groups: list[str], request: web.Request
    ) -> tuple[str, list[str]] | web.Response | None:
        """Apply Impersonate-* headers: the new identity, a refusal, or None (none given)."""
        as_user = request.headers.getall("Impersonate-User", [])
        as_groups = request.headers.getall("Impersonate-Group", [])
        extras = [h for h in request.headers if h.lower().startswith("impersonate-extra-")]
        if not as_user and not as_groups and not extras:
            return None
        if not as_user:
            return _status(
                500,
                "InternalError",
                f"Internal error occurred: requested {as_groups} without impersonating a user",
            )
        if len(as_user) != 1:
            return _status(400, "BadRequest", "only one Impersonate-User header is allowed")
        target = as_user[0]
        if not self.allowed(user, groups, "impersonate", "", "users", "", target):
            return _forbidden(user, "impersonate", "", "users", "", target)
        for group in as_groups:
            if not self.allowed(user, groups, "impersonate", "", "groups", "", group):
                return _forbidden(user, "impersonate", "", "groups", "", group)
        if extras:
            return _status(400, "BadRequest", "Impersonate-Extra-* is not supported by this fake")
        return target, [*as_groups, "system:authenticated"]

    # ---- requests ----------------------------------------------------------------------

    async def handle(
        self, request: web.Request, user: str, groups: list[str], parts: list[str]
    ) -> web.StreamResponse | None:
        """Answer requests for what this module serves; None for everything else."""
        if parts[:3] == ["apis", _AUTHZ, "v1"] and len(parts) == 4:
            if parts[3] == "subjectaccessreviews":
                return await self._review(request, user, groups, self_review=False)
            if parts[3] == "selfsubjectaccessreviews":
                return await self._review(request, user, groups, self_review=True)
            return None
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and parts[1] in (_RBAC, _NETWORKING):
            if parts[2] != "v1":
                return None
            group, rest = parts[1], parts[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, rest[0]) not in _KINDS:
            return None
        if namespace and (group, rest[0]) in _CLUSTER_SCOPED:
            return None  # a cluster-scoped kind has no namespaced path: the base 404
        plural = rest[0]
        name = rest[1] if len(rest) >= 2 else ""
        sub = rest[2] if len(rest) >= 3 else ""
        if plural == "pods" and sub in ("exec", "attach"):
            return None
        if (
            plural == "pods"
            and name
            and request.method == "GET"
            and not sub
            and (group, plural, namespace, name) not in self.objects
        ):
            return None  # a pod of the base fake
        if len(rest) > 3 or (sub and (plural, sub) != ("serviceaccounts", "token")):
            return None
        verb = self._verb(request, name, sub)
        resource = _resource(plural, sub)
        if not self.allowed(user, groups, verb, group, resource, namespace, name):
            return _forbidden(user, verb, group, resource, namespace, name)
        if sub == "token":
            return await self._token(request, namespace, name)
        if verb == "create":
            return await self._create(request, user, groups, group, plural, namespace)
        if verb == "get":
            obj = self.objects.get((group, plural, namespace, name))
            return web.json_response(obj) if obj else self._not_found(plural, name)
        if verb in ("list", "watch"):
            return await self._list(request, group, plural, namespace, watch=verb == "watch")
        if verb == "patch":
            return await self._patch(request, group, plural, namespace, name)
        if verb == "delete":
            return await self._delete(request, group, plural, namespace, name)
        return _status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    @staticmethod
    def _verb(request: web.Request, name: str, sub: str) -> str:
        method = request.method
        if sub:
            return "create" if method == "POST" else "get"
        if method == "POST":
            return "create"
        if method == "PATCH":
            return "patch"
        if method == "PUT":
            return "update"
        if method == "DELETE":
            return "delete" if name else "deletecollection"
        if name:
            return "get"
        watch = request.query.get("watch", "").lower()
        return "watch" if watch in ("1", "true") else "list"

    @staticmethod
    async def _json_body(
        request: web.Request, kinds: tuple[str, ...]
    ) -> dict[str, Any] | web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in kinds:
            return _status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(kinds)}",
            )
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _status(400, "BadRequest", f"the object provided is unrecognized: {exc}")
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the object provided is unrecognized")
        return body

    def _not_found(self, plural: str, name: str) -> web.Response:
        return _status(
            404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural}
        )

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def _notify(self, kind: str, group: str, plural: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        for watcher in self._watchers:
            if (watcher.group, watcher.plural) != (group, plural):
                continue
            if watcher.namespace and watcher.namespace != meta.get("namespace", ""):
                continue
            if watcher.name and watcher.name != meta["name"]:
                continue
            if not _selector_matches(watcher.labels, meta.get("labels", {})):
                continue
            watcher.queue.put_nowait((kind, json.loads(json.dumps(obj))))
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on every change."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    def named(
        self, plural: str, namespace: str | None = None, group: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind (optionally in one namespace), for assertions."""
        return [
            obj
            for (g, p, ns, _), obj in self.objects.items()
            if p == plural
            and (namespace is None or ns == namespace)
            and (group is None or g == group)
        ]

    async def _create(
        self,
        request: web.Request,
        user: str,
        groups: list[str],
        group: str,
        plural: str,
        namespace: str,
    ) -> web.Response:
        body = await self._json_body(request, ("application/json",))
        if isinstance(body, web.Response):
            return body
        api_version, kind = _KINDS[(group, plural)]
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            return _status(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({api_version}) or kind {body.get('kind')!r} "
                f"is not {kind!r}",
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            return _status(400, "BadRequest", "metadata must be an object")
        if meta.get("namespace", namespace) != namespace:
            return _status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent "
                "on the request",
            )
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            return _status(
                422,
                "Invalid",
                f'{kind} "" is invalid: metadata.name: Required value: name or generateName '
                "is required",
            )
        key = (group, plural, namespace, name)
        if key in self.objects:
            return _status(
                409,
                "AlreadyExists",
                f'{plural} "{name}" already exists',
                {"name": name, "kind": plural},
            )
        for owner in meta.get("ownerReferences", []):
            if not {"apiVersion", "kind", "name", "uid"} <= set(owner):
                return _status(
                    422,
                    "Invalid",
                    f'{kind} "{name}" is invalid: metadata.ownerReferences: Invalid value: '
                    "apiVersion, kind, name and uid are required",
                )
        problem = self._validate(kind, body, user, groups, namespace)
        if problem is not None:
            return problem
        if (group, plural) not in _CLUSTER_SCOPED:
            meta["namespace"] = namespace
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            creationTimestamp=_CREATED,
        )
        if kind == "Pod":
            self._start_pod(body)
        self.objects[key] = body
        await self._notify("ADDED", group, plural, body)
        return web.json_response(body, status=201)

    def _validate(
        self, kind: str, body: dict[str, Any], user: str, groups: list[str], namespace: str
    ) -> web.Response | None:
        name = body["metadata"].get("name", "")
        if kind == "RoleBinding":
            ref = body.get("roleRef") or {}
            if ref.get("apiGroup") != _RBAC or ref.get("kind") not in ("ClusterRole", "Role"):
                return _status(
                    422,
                    "Invalid",
                    f'RoleBinding.rbac.authorization.k8s.io "{name}" is invalid: '
                    "roleRef: Unsupported value",
                )
            plural = "clusterroles" if ref["kind"] == "ClusterRole" else "roles"
            if not self.allowed(
                user, groups, "bind", _RBAC, plural, namespace, ref.get("name", "")
            ):
                return _status(
                    403,
                    "Forbidden",
                    f'rolebindings.rbac.authorization.k8s.io "{name}" is forbidden: User "{user}" '
                    "cannot bind: RBAC: attempting to grant RBAC permissions not currently held",
                )
        if kind == "Pod":
            containers = (body.get("spec") or {}).get("containers") or []
            if not containers or not all(c.get("name") and c.get("image") for c in containers):
                return _status(
                    422, "Invalid", f'Pod "{name}" is invalid: spec.containers: Required value'
                )
            if namespace in self.pod_security_baseline:
                violations = _baseline_violations(body.get("spec") or {})
                if violations:
                    return _status(
                        403,
                        "Forbidden",
                        f'pods "{name}" is forbidden: violates PodSecurity "baseline:latest": '
                        + ", ".join(violations),
                    )
            quota = self.pod_quota.get(namespace)
            used = len(self.named("pods", namespace))
            if quota is not None and used >= quota:
                return _status(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: exceeded quota: compute-resources, requested: '
                    f"pods=1, used: pods={used}, limited: pods={quota}",
                )
        return None

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A Ready node (tests set up the cluster with these)."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": _CREATED,
            },
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        self.objects[("", "nodes", "", name)] = node
        return node

    def _start_pod(self, pod: dict[str, Any]) -> None:
        from .kube_apiserver import FakeContainer, FakePod

        spec = pod["spec"]
        containers = spec["containers"]
        image = containers[0]["image"]
        if image in self.pull_failing_images:
            pod["status"] = {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "ready": False,
                        "restartCount": 0,
                        "image": c["image"],
                        "imageID": "",
                        "state": {
                            "waiting": {
                                "reason": "ErrImagePull",
                                "message": f'failed to pull image "{c["image"]}": not found',
                            }
                        },
                    }
                    for c in containers
                ],
            }
            return
        node = spec.get("nodeName")
        if image in self.pending_images or (
            node is not None and ("", "nodes", "", node) not in self.objects
        ):
            pod["status"] = {"phase": "Pending"}
            return
        spec.setdefault("nodeName", "fake-node")
        pod["status"] = {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": True,
                    "restartCount": 0,
                    "image": c["image"],
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": _CREATED}},
                }
                for c in containers
            ],
        }
        meta = pod["metadata"]
        self.server.add_pod(
            FakePod(
                meta["name"],
                namespace=meta["namespace"],
                containers=[FakeContainer(c["name"], image=c["image"]) for c in containers],
            )
        )

    async def _list(
        self, request: web.Request, group: str, plural: str, namespace: str, *, watch: bool
    ) -> web.StreamResponse:
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        name = ""
        for term in filter(None, fields.split(",")):
            key, _, value = term.partition("=")
            if key.strip() == "metadata.name":
                name = value.strip().lstrip("=")
            elif key.strip() != "metadata.namespace":
                return _status(
                    400,
                    "BadRequest",
                    f'"{key}" is not a known field selector: only "metadata.name", '
                    '"metadata.namespace"',
                )
        items = [
            obj
            for (g, p, ns, n), obj in self.objects.items()
            if (g, p) == (group, plural)
            and (not namespace or ns == namespace)
            and (not name or n == name)
            and _selector_matches(labels, obj["metadata"].get("labels", {}))
        ]
        api_version, kind = _KINDS[(group, plural)]
        if not watch:
            return web.json_response(
                {
                    "kind": f"{kind}List",
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self._version)},
                    "items": items,
                }
            )
        watcher = _Watcher(group, plural, namespace, labels, name)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._watchers.append(watcher)
        timeout = float(request.query.get("timeoutSeconds", "30"))
        try:
            if not request.query.get("resourceVersion"):
                for obj in items:
                    await response.write(
                        json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"
                    )
            async with asyncio.timeout(timeout):
                while True:
                    # aiohttp does not cancel handlers when the client goes away: notice it.
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break
                    try:
                        async with asyncio.timeout(0.1):
                            kind_name, obj = await watcher.queue.get()
                    except TimeoutError:
                        continue
                    await response.write(
                        json.dumps({"type": kind_name, "object": obj}).encode() + b"\n"
                    )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._watchers.remove(watcher)
        return response

    async def _patch(
        self, request: web.Request, group: str, plural: str, namespace: str, name: str
    ) -> web.Response:
        body = await self._json_body(
            request, ("application/merge-patch+json", "application/strategic-merge-patch+json")
        )
        if isinstance(body, web.Response):
            return body
        key = (group, plural, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            return self._not_found(plural, name)
        meta = body.get("metadata") or {}
        for locked in ("name", "namespace", "uid"):
            if locked in meta and meta[locked] != obj["metadata"].get(locked):
                return _status(422, "Invalid", f"metadata.{locked}: field is immutable")
        # A resourceVersion in the patch is a precondition, as on the real server.
        wanted = meta.get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"].get("resourceVersion"):
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": plural},
            )
        patched = _merge_patch(obj, body)
        patched["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key] = patched
        await self._notify("MODIFIED", group, plural, patched)
        return web.json_response(patched)

    async def _delete(
        self, request: web.Request, group: str, plural: str, namespace: str, name: str
    ) -> web.Response:
        obj = self.objects.get((group, plural, namespace, name))
        if obj is None:
            return self._not_found(plural, name)
        await self.remove(group, plural, namespace, name)
        return web.json_response(obj)

    async def remove(self, group: str, plural: str, namespace: str, name: str) -> None:
        """Delete an object and, like the garbage collector, everything it owns."""
        obj = self.objects.pop((group, plural, namespace, name), None)
        if obj is None:
            return
        if plural == "pods":
            self.server.pods.pop((namespace, name), None)
        if plural == "serviceaccounts":
            user = f"system:serviceaccount:{namespace}:{name}"
            for token in [t for t, u in self.minted.items() if u == user]:
                del self.minted[token]
                self.server.forget_token(token)
        await self._notify("DELETED", group, plural, obj)
        uid = obj["metadata"]["uid"]
        owned = [
            key
            for key, other in self.objects.items()
            if any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences", []))
        ]
        for key in owned:
            await self.remove(*key)

    async def _token(self, request: web.Request, namespace: str, name: str) -> web.Response:
        if request.method != "POST":
            return _status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        body = await self._json_body(request, ("application/json",))
        if isinstance(body, web.Response):
            return body
        if (
            body.get("kind") != "TokenRequest"
            or body.get("apiVersion") != "authentication.k8s.io/v1"
        ):
            return _status(400, "BadRequest", "expected a TokenRequest of authentication.k8s.io/v1")
        if ("", "serviceaccounts", namespace, name) not in self.objects:
            return self._not_found("serviceaccounts", name)
        seconds = (body.get("spec") or {}).get("expirationSeconds", 3600)
        if not isinstance(seconds, int) or seconds < 600:
            return _status(
                422,
                "Invalid",
                "spec.expirationSeconds: Invalid value: may not specify a duration less "
                "than 10 minutes",
            )
        token = "fake-sa-" + secrets.token_urlsafe(24)
        user = f"system:serviceaccount:{namespace}:{name}"
        self.minted[token] = user
        self.server.learn_token(token, user)
        body["status"] = {"token": token, "expirationTimestamp": "2026-01-01T01:00:00Z"}
        return web.json_response(body, status=201)

    async def _review(
        self, request: web.Request, user: str, groups: list[str], *, self_review: bool
    ) -> web.Response:
        if request.method != "POST":
            return _status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        kind = "SelfSubjectAccessReview" if self_review else "SubjectAccessReview"
        plural = kind.lower() + "s"
        if not self_review and not self.allowed(user, groups, "create", _AUTHZ, plural):
            return _forbidden(user, "create", _AUTHZ, plural, "", "")
        if request.headers.get("Content-Type", "").split(";")[0].strip() == _PROTOBUF:
            try:
                body: dict[str, Any] | web.Response = _protobuf_review(await request.read())
            except (ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
                return _status(400, "BadRequest", f"the object provided is unrecognized: {exc}")
        else:
            body = await self._json_body(request, ("application/json", _PROTOBUF))
        if isinstance(body, web.Response):
            return body
        if body.get("kind") != kind or body.get("apiVersion") != f"{_AUTHZ}/v1":
            return _status(400, "BadRequest", f"expected a {kind} of {_AUTHZ}/v1")
        spec = body.get("spec") or {}
        resource = spec.get("resourceAttributes")
        non_resource = spec.get("nonResourceAttributes")
        if (resource is None) == (non_resource is None):
            return _status(
                422,
                "Invalid",
                f'{kind}.{_AUTHZ} "" is invalid: spec.resourceAttributes: Invalid value: '
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )
        if self_review:
            subject, subject_groups = user, groups
        else:
            subject, subject_groups = spec.get("user") or "", list(spec.get("groups") or [])
            if not subject and not subject_groups:
                return _status(
                    422,
                    "Invalid",
                    f'{kind}.{_AUTHZ} "" is invalid: spec.user: Invalid value: "": at least '
                    "one of user or group must be specified",
                )
        allowed = False
        if resource is not None:
            allowed = self.allowed(
                subject,
                subject_groups,
                resource.get("verb", ""),
                resource.get("group", ""),
                _resource(resource.get("resource", ""), resource.get("subresource", "")),
                resource.get("namespace", ""),
                resource.get("name", ""),
            )
        self.reviews.append((spec, allowed))
        async with self.changed:
            self.changed.notify_all()
        # RBAC has no opinion when no rule matches: no reason, as the real server answers.
        body["status"] = {"allowed": allowed}
        body.setdefault("metadata", {})["creationTimestamp"] = None
        return web.json_response(body, status=201)
