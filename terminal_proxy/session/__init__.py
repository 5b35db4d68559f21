"""One relayed terminal: an upstream, the browser links it serves, and its stoppers.

Read in the data's order: ``stop`` (why a session ends, the close-code table),
``sockets`` (the WebSocket ends as the session sees them), ``pump`` (the one relay loop)
and ``sides`` (its two sinks), ``links`` (browsers, and the set of them), ``resumable``
(a browser that may come back), ``timers`` (time limit, idle timeout, re-poll),
``extension``, ``recording`` (the tap and its failure policy), and ``relay`` (the
``Session`` that joins them).

Import from the modules themselves: this package's ``__init__`` imports nothing, so
metrics, audit and resume can use ``stop`` without loading the relay.
"""
