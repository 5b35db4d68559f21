"""Provisioned terminals: a fresh, least-privilege terminal pod per user and namespace.

For ``kind: kubernetes-provision`` routes (``/k8s-terminal/<cluster>/<namespace>/terminal.ws``):

1. the user is identified and a SubjectAccessReview checks they may ``create pods/exec`` in
   the namespace (what they could do with the terminal they are given);
2. their live terminal in that namespace is reused (a reload reconnects), or a new one is
   created: ServiceAccount (the parent, holding the state), RoleBinding to the configured
   role, TokenRequest, kubeconfig Secret, NetworkPolicy, Pod (see ``manifests``); any
   failure on the way deletes what was created and reaches the browser as a status with
   a reason (403 no permission, 429 quota exceeded, 502 image cannot be pulled, 504 not
   ready in time);
3. the grant execs into the pod with the gateway's credentials impersonating the user, and
   ends at the terminal's expiry (4004); a ``v1.terminal-proxy`` browser is warned before
   and may extend the expiry (``extension`` at a time, up to creation + ``max_expiry``);
4. every re-poll re-runs the review and writes the heartbeat annotation on the parent; a
   cleanup loop deletes terminals whose heartbeat is older than ``heartbeat_timeout`` or
   whose expiry has passed. All state lives in the cluster, so a restarted gateway (or
   another replica) cleans up what an earlier one created; deletes are idempotent.

``kind: kubernetes-node-debug`` routes (``/k8s-node-debug/<cluster>/<namespace>/<node>/
terminal.ws``) get the node-debug variant: a privileged pod on ``<node>`` with the host's
PID, network and IPC namespaces and its ``/`` at ``/host``. Only members of
``provision.node_debug.admin_groups`` may have one (403 for anyone else, before any API
request); the reviews also require ``create pods`` in the namespace; a node that does not
exist is a 404. Same parent, heartbeat, expiry and cleanup as every terminal.

Modules: ``authorizer`` (the decision: route, identity, reviews, grant), ``lifecycle`` (a
terminal's life in the cluster: find, create, heartbeat, extend, sweep), ``manifests``
(the objects), ``failures`` (what the browser and the log are told).
"""

from .authorizer import ProvisionAuthorizer
from .lifecycle import Terminal, Terminals

__all__ = ["ProvisionAuthorizer", "Terminal", "Terminals"]
