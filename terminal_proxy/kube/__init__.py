"""The gateway's Kubernetes client layer, shared by its Kubernetes authorizers.

``cluster``: the clusters (kubeconfig or in-cluster credentials, API clients, exec URLs);
``identity``: who the user is (an authenticating proxy's header or a verified bearer JWT);
``review``: SubjectAccessReviews and impersonation. Nothing here decides a route: the
authorizers are in ``terminal_proxy.authorization.kubernetes`` and
``terminal_proxy.authorization.provision``.

Importing kubernetes_asyncio costs ~0.3 s and tens of MB: only the Kubernetes authorizers
use this package, and the app imports them (through ``terminal_proxy.authorization.build``)
only when a route needs them.
"""
