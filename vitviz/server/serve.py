"""The vitviz HTTP server: a Ray Serve application with a FastAPI ingress.

One replica holds one model (one GPU each when the cluster has GPUs). Requests are gathered
into batches by ``@serve.batch`` and explained by :class:`vitviz.server.service.Engine`. Start it
with ``python -m vitviz serve --model NAME`` (one machine) or deploy ``serve_config.yaml``
on a Ray cluster (``serve deploy``); the API is documented at ``/docs`` and in the README.

Endpoints (version 5; every one but health needs the bearer token when one is set):
    ``GET /v1/health``: liveness and the model name.
    ``GET /v1/model``: model description, labels, capabilities, methods, limits.
    ``GET /v1/model/anatomy``: patch-embedding filters and position similarity (binary).
    ``POST /v1/embeddings``, ``POST /v1/features``: a model input's vectors going into the
        encoder, and its token features coming out of it (binary).
    ``POST /v1/explain``: the image bytes as the body, options as query parameters; the
        answer is a :mod:`vitviz.wire` message.
    ``POST /v1/trust``: a map's deletion/insertion curves and occlusion (JSON); the body is
        the model's input and the maps (:func:`vitviz.wire.encode_trust_request`).
    ``POST /v1/text-relevance``: a CLIP caption's token relevance for ``label`` (JSON); the
        body is the model's input as PNG.
    ``POST /v1/ablation``, ``POST /v1/lens``, ``POST /v1/norms``: head ablation, the logit
        lens and token norms of one model input (JSON; the body is the model's input as PNG).
"""

import asyncio
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig

from vitviz import wire
from vitviz.server.options import (
    AblationOptions,
    AppArgs,
    ExplainOptions,
    LensOptions,
    NormsOptions,
    Settings,
    TextRelevanceOptions,
    TrustOptions,
)
from vitviz.server.service import (
    API_VERSION,
    Admission,
    ApiError,
    Engine,
    Job,
    check_token,
    options_error,
)
from vitviz.server.service import too_large as _too_large

api = FastAPI(
    title="vitviz",
    version=str(API_VERSION),
    description=(
        "Vision Transformer attention over HTTP. POST an image to /v1/explain; the answer is "
        f"a binary message ({wire.MEDIA_TYPE}): 'VITVIZ1\\n', a uint32 header length, a JSON "
        "header (predictions, token layout, array table) and raw little-endian arrays."
    ),
)


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@api.exception_handler(Exception)
async def _internal(_: Request, err: Exception) -> JSONResponse:
    body = ApiError(500, "internal", f"the server failed ({type(err).__name__})").body()
    return JSONResponse(body, status_code=500)


@api.exception_handler(RequestValidationError)
async def _bad_options(_: Request, err: RequestValidationError) -> JSONResponse:
    refused = options_error(err.errors())  # 422 for a wrong type, 400 for a wrong choice
    return JSONResponse(refused.body(), status_code=refused.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive(request: Request, settings: Settings, uploads: Admission) -> bytes:
    """Read the body under its own slot and timeout, before the request takes a queue slot.

    A client that trickles its body holds an upload slot (at most ``max_uploads``) for at
    most ``upload_timeout_s`` and then gets 408; it never holds one of the queue's slots.
    """
    limit = settings.upload_timeout_s
    with uploads:
        try:
            return await asyncio.wait_for(_read_body(request, settings.max_upload_bytes), limit)
        except TimeoutError:
            raise ApiError(
                408,
                "upload_timeout",
                f"the upload took longer than {limit:g} s; send the image faster or smaller",
            ) from None


# Above the deployment class: Serve ships the class with the module globals defined before it.
LOOPBACK_ENV = "VITVIZ_RAY_LOOPBACK"
RECORD_EVERY_S = 10.0  # how often a running server notes its processes
SHUTDOWN_TIMEOUT_S = 45.0  # Serve's and Ray's own shutdown, before the processes are stopped
STOP_GRACE_S = 5.0  # between SIGTERM and SIGKILL for a process left after the shutdown
# routes whose body is the model's input (resized and cropped) and whose answer is binary
_MODEL_INPUT_ROUTE: dict[str, Any] = {
    "response_class": Response,
    "responses": {200: {"content": {wire.MEDIA_TYPE: {}}, "description": "binary message"}},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "description": "the model's input image (already resized and cropped), as PNG",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
}


GRPC_PORT_HOOK = ("ray.serve._private.replica", "add_port_to_grpc_server")
"""The private Ray function :func:`replica_grpc_on_loopback` wraps: (module, name)."""
PRIVATE_RAY = (GRPC_PORT_HOOK, ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"))
"""Every private Ray name this module touches; ``tests/test_ray_private.py`` fails, naming
the Ray version, when one is missing."""


def replica_grpc_on_loopback() -> bool:
    """Patch Ray's private replica code (the only such patch): a Serve replica opens its
    inter-deployment gRPC port on loopback, not on all interfaces.

    What: ``ray.serve._private.replica.add_port_to_grpc_server(server, address)``
    (:data:`GRPC_PORT_HOOK`) is wrapped so that an all-interfaces address (``[::]``,
    ``0.0.0.0``) becomes ``127.0.0.1``. Why: Ray Serve 2.60 opens that port on ``[::]:0``
    whatever the node's address (``replica.py``, ``_on_initialized``), and no setting moves
    it; in a private one-machine instance nothing outside the machine needs it, and every
    other port is kept on loopback by Ray's own settings (:func:`private_ray_on_loopback`).

    Runs in the replica's process before Serve starts that server. On a Ray version without
    the function the port is left as Ray opens it and a warning is printed. Returns whether
    the patch is in place.
    """
    module_name, name = GRPC_PORT_HOOK
    try:
        replica = importlib.import_module(module_name)
    except ImportError:
        replica = None
    original = getattr(replica, name, None)
    if original is None:
        print(
            f"warning: this Ray has no {module_name}.{name}; the replica's gRPC port stays "
            "where Ray opens it (see vitviz.server.serve.replica_grpc_on_loopback)",
            file=sys.stderr,
            flush=True,
        )
        return False
    if getattr(original, "vitviz_loopback", False):
        return True

    def on_loopback(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return original(server, address)

    on_loopback.vitviz_loopback = True  # type: ignore[attr-defined]
    setattr(replica, name, on_loopback)
    return True


@serve.deployment(name="VitvizServer")
@serve.ingress(api)
class VitvizServer:
    """One replica: a loaded model, batching, admission control and the routes."""

    def __init__(self, settings: dict[str, Any]) -> None:
        if os.environ.get(LOOPBACK_ENV) == "1":  # inherited from a private instance's start
            replica_grpc_on_loopback()
        self.settings = Settings.model_validate(settings)
        self.settings.resolve_token()  # read here, so the secret is not a deployment arg
        self.engine = Engine(self.settings)
        self.admission = Admission(self.settings.queue_limit, self.settings.retry_after_s)
        self.uploads = Admission(
            self.settings.max_uploads, self.settings.retry_after_s, "uploads being received"
        )
        self._run_batch.set_max_batch_size(self.settings.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.settings.batch_wait_s)

    def _auth(self, request: Request) -> None:
        check_token(self.settings.token, request.headers.get("authorization"))

    @api.get("/v1/health", summary="Liveness (no token needed)")
    async def health(self) -> dict[str, Any]:
        """The server is up and its model loaded."""
        return {
            "status": "ok",
            "api_version": API_VERSION,
            "model": self.engine.name,
            "replica": {
                **self.engine.stats(),
                "in_flight": self.admission.active,
                "uploading": self.uploads.active,
            },
        }

    @api.get("/v1/model", summary="Model description, labels, methods and limits")
    async def model(self, request: Request) -> dict[str, Any]:
        """What :meth:`vitviz.server.service.Engine.info` says."""
        self._auth(request)
        return self.engine.info()

    @api.get("/v1/model/anatomy", summary="Patch filters and position similarity (binary)")
    async def anatomy(self, request: Request) -> Response:
        """The model's anatomy as a binary message."""
        self._auth(request)
        data = await asyncio.to_thread(self.engine.anatomy_message)
        return Response(data, media_type=wire.MEDIA_TYPE)

    async def _model_input_answer(self, request: Request, answer: Any) -> Response:
        """Run ``answer(body)`` for an uploaded model input, under the token and a queue slot."""
        self._auth(request)
        body = await _receive(request, self.settings, self.uploads)
        self.admission.acquire()
        try:
            data = await asyncio.to_thread(answer, body)
        finally:
            self.admission.release()
        return Response(data, media_type=wire.MEDIA_TYPE)

    @api.post(
        "/v1/embeddings",
        summary="One model input's patch, position and token vectors (binary, float16)",
        **_MODEL_INPUT_ROUTE,
    )
    async def embeddings(self, request: Request) -> Response:
        """What the lesson's embedding steps show, for one model input."""
        return await self._model_input_answer(request, self.engine.embeddings_message)

    @api.post(
        "/v1/features",
        summary="One model input's token features after the last block (binary, float16)",
        **_MODEL_INPUT_ROUTE,
    )
    async def features(self, request: Request) -> Response:
        """``forward_features`` of one model input: every token's final features and the
        token layout (for the PCA picture and patch similarity)."""
        return await self._model_input_answer(request, self.engine.features_message)

    async def _json_answer(self, request: Request, answer: Any) -> dict[str, Any]:
        """Run ``answer(body)`` for an uploaded body, under the token and a queue slot."""
        self._auth(request)
        body = await _receive(request, self.settings, self.uploads)
        self.admission.acquire()
        try:
            return await asyncio.to_thread(answer, body)
        finally:
            self.admission.release()

    @api.post(
        "/v1/trust",
        summary="Deletion/insertion curves, random baseline and occlusion of a map (JSON)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "a vitviz.wire message: the model's input as the uint8 array "
                "'image' [H, W, 3] and the header's 'maps' (name → [gh, gw] numbers)",
                "content": {wire.MEDIA_TYPE: {"schema": {"type": "string"}}},
            }
        },
    )
    async def trust(
        self, request: Request, options: Annotated[TrustOptions, Query()]
    ) -> dict[str, Any]:
        """How far to trust a map: :meth:`vitviz.server.service.Engine.trust_answer`."""
        return await self._json_answer(
            request, lambda body: self.engine.trust_answer(body, options)
        )

    @api.post(
        "/v1/text-relevance",
        summary="A CLIP caption's token relevance for a typed label (JSON)",
        openapi_extra=_MODEL_INPUT_ROUTE["openapi_extra"],
    )
    async def text_relevance(
        self, request: Request, options: Annotated[TextRelevanceOptions, Query()]
    ) -> dict[str, Any]:
        """Which words of the label's caption made the image match it."""
        return await self._json_answer(
            request, lambda body: self.engine.text_relevance_answer(body, options)
        )

    async def _json_bytes_answer(self, request: Request, answer: Any) -> Response:
        """Run ``answer(body)`` (JSON bytes) for an uploaded body, under the token and a slot."""
        self._auth(request)
        body = await _receive(request, self.settings, self.uploads)
        self.admission.acquire()
        try:
            data = await asyncio.to_thread(answer, body)
        finally:
            self.admission.release()
        return Response(data, media_type="application/json")

    @api.post(
        "/v1/ablation",
        summary="Each head's and layer's effect on a class when removed (JSON)",
        openapi_extra=_MODEL_INPUT_ROUTE["openapi_extra"],
    )
    async def ablation(
        self, request: Request, options: Annotated[AblationOptions, Query()]
    ) -> Response:
        """Head ablation: :meth:`vitviz.server.service.Engine.ablation_answer`."""
        return await self._json_bytes_answer(
            request, lambda body: self.engine.ablation_answer(body, options)
        )

    @api.post(
        "/v1/lens",
        summary="The logit lens: the final norm and head read after every block (JSON)",
        openapi_extra=_MODEL_INPUT_ROUTE["openapi_extra"],
    )
    async def lens(self, request: Request, options: Annotated[LensOptions, Query()]) -> Response:
        """The logit lens: :meth:`vitviz.server.service.Engine.lens_answer`."""
        return await self._json_bytes_answer(
            request, lambda body: self.engine.lens_answer(body, options)
        )

    @api.post(
        "/v1/norms",
        summary="Residual-stream token norms and their high-norm outliers (JSON)",
        openapi_extra=_MODEL_INPUT_ROUTE["openapi_extra"],
    )
    async def norms(self, request: Request, options: Annotated[NormsOptions, Query()]) -> Response:
        """Token norms: :meth:`vitviz.server.service.Engine.norms_answer`."""
        return await self._json_bytes_answer(
            request, lambda body: self.engine.norms_answer(body, options)
        )

    @api.post(
        "/v1/explain",
        summary="Explain one image",
        response_class=Response,
        responses={200: {"content": {wire.MEDIA_TYPE: {}}, "description": "binary message"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "the image file's bytes (JPEG, PNG, WebP, BMP, GIF, TIFF)",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def explain(
        self, request: Request, options: Annotated[ExplainOptions, Query()]
    ) -> Response:
        """Predictions, token layout, statistics and the attention arrays asked for."""
        self._auth(request)
        body = await _receive(request, self.settings, self.uploads)
        start = time.monotonic()
        limit = self.settings.timeout_s
        self.admission.acquire()
        release = True
        try:
            job = await asyncio.to_thread(self.engine.make_job, body, options)
            del body  # the job holds the model's input; the upload is no longer needed
            left = limit - (time.monotonic() - start)
            task = asyncio.ensure_future(self._run_batch(job))
            try:
                outcome = await asyncio.wait_for(asyncio.shield(task), max(left, 0.001))
            except TimeoutError:
                # the work goes on: its slot is given back only when it ends
                release = False
                task.add_done_callback(self._release_after)
                raise ApiError(
                    504,
                    "timeout",
                    f"the explanation took longer than {limit:g} s; "
                    "the server is overloaded, try again later",
                ) from None
            if outcome.error is not None:
                raise outcome.error
            data = await asyncio.to_thread(self.engine.encode, job, outcome.result)
        finally:
            if release:
                self.admission.release()
        return Response(data, media_type=wire.MEDIA_TYPE)

    def _release_after(self, task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it
        self.admission.release()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _run_batch(self, jobs: list[Job]) -> list[Any]:
        return await asyncio.to_thread(self.engine.run, jobs)


def _cluster_gpus() -> int:
    try:
        import ray

        if ray.is_initialized():
            return int(ray.cluster_resources().get("GPU", 0))
    except Exception:  # no cluster yet: look at this machine
        pass
    import torch

    return torch.cuda.device_count()


def build_app(args: Mapping[str, Any] | AppArgs) -> serve.Application:
    """The Serve application (``import_path: vitviz.server.serve:build_app`` in a Serve config).

    ``args``: the fields of :class:`~vitviz.server.options.AppArgs`: any :class:`Settings`
    field (``token`` defaults to each replica's ``$VITVIZ_TOKEN``, so the secret need not be
    in the config) plus ``replicas`` (an int, or ``auto`` to autoscale between 1 and the
    number of GPUs; default one per GPU, or 1 without GPUs), ``gpus_per_replica`` (default 1
    with GPUs) and ``cpus_per_replica`` (default 1). Strings (a config file's, ``serve run …
    k=v``) are converted to each field's type; an unknown name is a ``ValueError``.
    """
    app = AppArgs.parse(args)
    settings = app.settings()
    if settings.device.startswith("cuda:"):  # Ray gives each replica its own GPU as cuda:0
        settings.device = "cuda"
    gpus = _cluster_gpus() if settings.device in ("auto", "cuda") else 0
    per_gpu = app.gpus_per_replica if app.gpus_per_replica is not None else (1 if gpus else 0)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": app.cpus_per_replica, "num_gpus": float(per_gpu)},
        # our admission control answers first (JSON 503); Serve's queue bound is the backstop
        "max_ongoing_requests": settings.queue_limit
        + settings.max_uploads
        + settings.max_batch_size,
        "max_queued_requests": 4 * settings.queue_limit,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=settings.retry_after_s
        ),
    }
    most = max(1, int(gpus / per_gpu) if per_gpu else 1)
    if app.replicas == "auto":
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": most,
            "target_ongoing_requests": settings.max_batch_size,
        }
    else:
        options["num_replicas"] = app.replicas if app.replicas is not None else most
    return VitvizServer.options(**options).bind(settings.model_dump())


def private_ray_on_loopback() -> None:
    """Keep every port of a private Ray instance on loopback, with metrics off.

    By default Ray binds its GCS, raylet and worker gRPC servers to the machine's network
    address (all interfaces in older versions) and exports Prometheus metrics there, even
    when ``ray.init`` starts a one-machine instance; ``_node_ip_address="127.0.0.1"`` is turned
    back into that address. Ray keeps everything on loopback in its local-only mode (the
    default on macOS and Windows, chosen with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), and
    ``RAY_enable_metrics_collection=0`` stops the metrics exporters. Both go into the
    environment the Ray processes inherit; the first is also read by this process's Ray
    module, so it is set there too. Checked with Ray 2.60: every listening socket of the
    server's processes is then on 127.0.0.1 (``tests/test_serve.py``).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_enable_metrics_collection"] = "0"  # noqa: SIM112 - Ray reads this name
    os.environ[LOOPBACK_ENV] = "1"  # for the replicas: see replica_grpc_on_loopback
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


class ProcessTree:
    """The server's descendant processes (Ray's GCS, raylet, agents, workers), remembered so
    that none outlives the server.

    Ray's agents are children of the raylet; when it goes first they are re-parented and no
    longer descend from the server. On Linux the server is made their "subreaper", so they
    are re-parented to it instead of to init; elsewhere the tree is recorded while it is
    whole (after start, now and then while serving, and when stopping). Every process ever
    seen is stopped. ``psutil`` comes with Ray (``ray/thirdparty_files``): import Ray first.
    """

    def __init__(self) -> None:
        import psutil

        _become_subreaper()
        self.root = psutil.Process()
        self.seen: set[Any] = set()  # psutil.Process: equal only for the same pid and start time
        self._lock = threading.Lock()  # the shutdown's watchdog may stop the tree meanwhile

    def record(self) -> None:
        """Remember every process now below this one."""
        import psutil

        with contextlib.suppress(psutil.Error):
            children = self.root.children(recursive=True)
            with self._lock:
                self.seen.update(children)

    def alive(self) -> list[Any]:
        """The remembered processes still running."""
        with self._lock:
            seen = list(self.seen)
        return [proc for proc in seen if _running(proc)]

    def stop(self, grace_s: float = STOP_GRACE_S, rounds: int = 3) -> list[Any]:
        """Stop every process of the tree: SIGTERM, up to ``grace_s`` to end, then SIGKILL;
        again for any process that appeared meanwhile (a raylet starting its agents as it is
        stopped), up to ``rounds`` times. Returns those still running (none expected)."""
        for _ in range(rounds):
            self.record()
            procs = self.alive()
            if not procs:
                break
            _end(procs, grace_s)
        _reap_children()
        return self.alive()


def _running(proc: Any) -> bool:
    """A psutil process still runs (a zombie has ended)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _end(procs: list[Any], grace_s: float) -> None:
    """SIGTERM the processes, wait up to ``grace_s``, SIGKILL the rest, wait up to ``grace_s``."""
    import psutil

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(psutil.Error):  # refused for a pid now reused
                proc.send_signal(sig)
        deadline = time.monotonic() + grace_s
        while procs and time.monotonic() < deadline:
            _reap_children()
            time.sleep(0.1)
            procs = [proc for proc in procs if _running(proc)]
        if not procs:
            return


def _become_subreaper() -> None:
    """Linux: orphaned descendants are re-parented to this process, not to init
    (``prctl(PR_SET_CHILD_SUBREAPER)``), so they stay in its tree until it stops them."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # 36: PR_SET_CHILD_SUBREAPER


def _reap_children() -> None:
    """Collect this process's exited children, so that none stays a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


SERVE_START_TRIES = 3
"""Ray Serve gives its HTTP proxy a fixed 60 s to start (``HTTP_PROXY_TIMEOUT``, not
configurable); on a loaded machine that can pass, and a later ``serve.start`` finds the same
proxy further along."""


def run_server(
    args: Mapping[str, Any] | AppArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    ready: Sequence[str] = (),
) -> None:
    """Start Ray (a local instance unless ``address``), deploy, serve until interrupted.

    SIGTERM and SIGINT, during start-up too, stop the server: Serve and Ray are shut down and
    then every process the server started is stopped (:class:`ProcessTree`), so nothing is
    left behind. A second signal does not cut that short; it is bounded by
    ``SHUTDOWN_TIMEOUT_S`` and ``STOP_GRACE_S``. ``args``: as :func:`build_app`'s, checked
    before Ray starts.
    """
    import logging

    import ray

    app = AppArgs.parse(args)
    stopping = False

    def _stop(*_: object) -> None:
        if not stopping:  # while shutting down, a second signal waits for the shutdown
            raise KeyboardInterrupt

    def _catch_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)

    _catch_signals()
    tree = ProcessTree()
    try:
        # a busy machine (a model loading next door) can starve Serve's proxy for more than
        # its default 5 s readiness check, after which Serve gives up on it: allow more
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
        os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
        # Ray starts its workers at niceness 15 (below its driver); here the workers *are* the
        # server (proxy, controller, replicas), and at 15 any busy process on the machine
        # takes ~28x their CPU share: Serve's proxy missed its readiness checks for minutes
        # beside two busy loops. The operator can still set another value.
        os.environ.setdefault("RAY_worker_niceness", "0")  # Ray reads this exact name
        if address is None:
            private_ray_on_loopback()
        ray.init(
            address=address or "local",
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
        # ray.init puts its own SIGTERM handlers in place (one that exits where it stands and
        # Ray's crash handler, which aborts the process and leaves Ray's agents running)
        _catch_signals()
        tree.record()
        timeout = app.timeout_s
        for attempt in range(SERVE_START_TRIES):  # Serve waits a fixed 60 s for its proxy
            try:
                serve.start(
                    http_options={"host": host, "port": port, "request_timeout_s": timeout + 30},
                    logging_config={"log_level": "WARNING"},
                )
                break
            except TimeoutError as err:  # a busy machine: the proxy is still starting
                if attempt == SERVE_START_TRIES - 1:
                    raise
                print(f"warning: {err} Waiting again (the machine is busy).", flush=True)
        serve.run(build_app(app), name="vitviz", route_prefix="/", blocking=False)
        tree.record()
        print(f"vitviz server ready at http://{host}:{port}  (API docs: /docs)", flush=True)
        for line in ready:
            print(line, flush=True)
        while True:  # a replica Serve restarts is a new process: keep the record current
            time.sleep(RECORD_EVERY_S)
            tree.record()
    finally:
        stopping = True
        _catch_signals()  # Ray's handlers may be back if the signal came during ray.init
        tree.record()
        _shut_down(tree, address)


def _shut_down(tree: ProcessTree, address: str | None) -> None:
    """Shut Serve and Ray down (within ``SHUTDOWN_TIMEOUT_S``), then stop every process the
    server started that is still running."""
    import ray

    def overdue() -> None:  # Serve or Ray hangs: stop the processes and leave
        print(
            f"warning: the server did not shut down within {SHUTDOWN_TIMEOUT_S:g} s; "
            "stopping its processes",
            file=sys.stderr,
            flush=True,
        )
        tree.stop()
        os._exit(1)

    watchdog = threading.Timer(SHUTDOWN_TIMEOUT_S, overdue)
    watchdog.daemon = True
    watchdog.start()
    try:
        if ray.is_initialized():
            try:
                if address is None:
                    serve.shutdown()
                else:  # a shared cluster: take only our application down
                    serve.delete("vitviz")
            except Exception as err:  # half started: Ray's shutdown below still runs
                print(f"warning: Serve did not shut down: {type(err).__name__}", file=sys.stderr)
            tree.record()
            ray.shutdown()
    finally:
        watchdog.cancel()
        left = tree.stop()
        if left:
            names = ", ".join(f"{p.pid}" for p in left)
            print(f"warning: processes still running after the server: {names}", file=sys.stderr)
