"""The gRPC decision service (``cvm serve``), one module per concept:

- :mod:`server.config`: the settings (:class:`~server.config.ServerConfig`, exploration);
- :mod:`server.model`: a bundle with its exploration, as array operations;
- :mod:`server.parsing` / :mod:`server.responses`: requests to arrays, arrays to responses;
- :mod:`server.errors`: refused requests and the one place errors become statuses;
- :mod:`server.writer`: decision-log writes from the event loop that never block it;
- :mod:`server.state`: the active model, its activations and the log of one process;
- :mod:`server.servicers`: ``DecisionService`` and ``DecisionAdmin``;
- :mod:`server.interceptors`, :mod:`server.metrics`: auth and per-RPC metrics;
- :mod:`server.app`, :mod:`server.workers`, :mod:`server.jsonlog`: running it;
- :mod:`server.client`: the typed client.
"""
