"""terminal-proxy: a safe web-terminal gateway.

A browser opens a WebSocket on a terminal route; the gateway asks the web app's
authorization API whether it may, dials the upstream it names (a kube-apiserver
``pods/exec`` or ``pods/attach`` URL, or a runner-style session server), then relays
frames both ways, translating subprotocols, until one of the session's stoppers fires.
"""

__version__ = "0.1.0"
