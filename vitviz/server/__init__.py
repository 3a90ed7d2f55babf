"""The HTTP server: ``wire`` (the binary format, numpy only), ``service`` (what a request
does, without Ray or FastAPI) and ``serve`` (the Ray Serve application with its FastAPI
ingress). Start it with ``python -m vitviz serve``; clients use
:class:`vitviz.backends.remote.RemoteBackend`."""
