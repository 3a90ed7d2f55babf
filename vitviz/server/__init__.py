"""The HTTP server: ``wire`` (the binary format and the options' values, numpy only),
``options`` (a request's options and a server's settings, pydantic models), ``service`` (what
a request does, without Ray or FastAPI) and ``serve`` (the Ray Serve application with its
FastAPI ingress). Start it with ``python -m vitviz serve``; clients use
:class:`vitviz.backends.remote.RemoteBackend`."""
