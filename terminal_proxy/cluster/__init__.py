"""Several replicas serving one set of sessions (docs/cluster.md).

``directory``: where each replica takes forwarded requests; ``signing``: the signature
that makes a request a replica's; ``forward``: a browser's resume or join of another
replica's session, passed through to that replica; ``internal``: the listener that takes
them. Nothing here is imported unless ``cluster`` is configured.
"""
