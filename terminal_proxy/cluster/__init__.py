"""Several replicas serving one set of sessions (docs/cluster.md).

With Redis (``cluster.redis_url``): global limits with per-session leases (``limits``),
the session registry and the replica's heartbeat (``agent``), revocation pushed over
pub/sub (``revoke``), the replica directory (``directory``) and the operators' view
(``sessions``). Between replicas: the signature that makes a request a replica's
(``signing``), a browser's resume or join of another replica's session passed through to
it (``forward``), and the listener that takes those (``internal``). Nothing here is
imported unless ``cluster`` is configured.
"""
