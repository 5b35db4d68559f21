"""Several replicas sharing one Redis (docs/cluster.md): global limits with per-session
leases (``limits``), the session registry and the replica's heartbeat (``agent``),
revocation pushed over pub/sub (``revoke``), the replica directory (``directory``) and the
operators' view (``sessions``). Nothing here is imported unless ``cluster.redis_url`` is set.
"""
