"""What a server and a request may be told, as pydantic models validated once.

:class:`ExplainOptions` is the query of ``POST /v1/explain``: FastAPI validates it from the
query string (and documents it at ``/docs``), and :meth:`vitviz.server.service.Engine.make_job`
takes it; :class:`TrustOptions` and :class:`TextRelevanceOptions` are those of
``POST /v1/trust`` and ``POST /v1/text-relevance``, :class:`AblationOptions`,
:class:`LensOptions` and :class:`NormsOptions` those of ``POST /v1/ablation``, ``/v1/lens``
and ``/v1/norms``. :class:`Settings` is how a server
runs; :class:`AppArgs` adds how Serve places its replicas and is what ``build_app`` and
``python -m vitviz serve`` give. Config files and ``serve run … k=v`` give strings: pydantic
converts them to each field's type.

The values an option takes (:data:`~vitviz.wire.Attention`,
:data:`~vitviz.wire.ArrayDtype`, :data:`~vitviz.wire.Gradients`) live in the
pydantic-free :mod:`vitviz.wire`, which the client imports too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from vitviz.inputs import images
from vitviz.wire import ArrayDtype, Attention, Gradients

MAX_ABLATION_BATCH = 256  # ablated copies per forward a request may ask for (then the server's cap)
MAX_LENS_TOP_K = 100  # top classes per layer a logit lens request may ask for
MAX_NORMS_K = 1000.0  # the largest outlier factor a token norms request may ask for
DEFAULT_MAX_WORK_BYTES = 4 * 2**30
"""What one research request (ablation, lens, norms) may hold by default: 4 GiB. By
:func:`vitviz.engine.ablation.ablation_cost`, ViT-B/16 at 224 px ablates 16 copies per forward
in 0.2 GB; ViT-L/14 at 518 px needs 4.9 GB for 16, so it is refused there and told the largest
batch that fits."""
WORK_ENV = "VITVIZ_MAX_WORK_MB"


def default_work_bytes() -> int:
    """``$VITVIZ_MAX_WORK_MB`` in bytes when set (a ``ValueError`` naming it when it is not a
    positive number), else :data:`DEFAULT_MAX_WORK_BYTES`."""
    raw = os.environ.get(WORK_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_WORK_BYTES
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{WORK_ENV} must be a positive number of MiB, got {raw!r}")
    return int(value * 2**20)


class ExplainOptions(BaseModel):
    """The options of one explain request (query parameters; ``class`` and ``layer`` repeat).

    A value of the wrong type is refused with 422, one that is not among a field's choices
    with 400 (:func:`refusal`); what depends on the model (``top_k``'s range, class names,
    layer numbers, ``seen``) is checked by ``make_job``.
    """

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, frozen=True)

    top_k: int = Field(5, description="predictions (1 to max(50, classes))")
    attention: Attention = Field(
        "readout", description="none, readout ([L,H,N] rows of the readout) or full"
    )
    dtype: ArrayDtype = Field("float16", description="attention arrays: float16, uint8 or float32")
    classes: list[str] = Field(
        [],
        alias="class",
        description="class-specific: a class index, name or 'top' (repeat for several)",
    )
    layers: list[int] = Field(
        [], alias="layer", description="layers whose gradients to return (default all)"
    )
    seen: bool = Field(False, description="the image is already the model's input")
    gradients: Gradients = Field(
        "relevance",
        description="class answers: relevance (what the maps read) or full (∂y/∂A too)",
    )
    negative: bool = Field(False, description='class answers for -y_c: "why not" each class')


class TrustOptions(BaseModel):
    """The options of one trust request (query parameters); the body is a
    :func:`vitviz.wire.encode_trust_request` message with the model's input and the maps.

    What depends on the model (the class, the maps' grid) is checked by the engine.
    """

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, frozen=True)

    target: int = Field(alias="class", description="the class index whose probability is followed")
    main: str = Field(description="the map whose curves are drawn: one of the body's map names")
    steps: int = Field(16, ge=1, le=256, description="curve steps (1 to 256)")
    seeds: int = Field(3, ge=1, le=16, description="random orders for the baseline (1 to 16)")
    batch: int = Field(
        16, ge=1, description="perturbed images per forward (at most the server's max_batch_size)"
    )


class TextRelevanceOptions(BaseModel):
    """The options of one text relevance request (a CLIP model's caption for ``label``); the
    body is the model's input as PNG."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, frozen=True)

    label: str = Field(description="the typed label whose caption's tokens are explained")
    start_layer: int = Field(
        0,
        description="the first text layer whose relevance is accumulated (default 0: every "
        "layer; negative counts from the end, -1 the last layer alone as in Chefer et al.'s "
        "CLIP notebook)",
    )


class AblationOptions(BaseModel):
    """The options of one head ablation request (query parameters); the body is the model's
    input as PNG. The class is checked against the model by the engine."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, frozen=True)

    target: int = Field(alias="class", description="the class whose logit and probability change")
    kind: Literal["zero", "mean"] = Field(
        "zero", description="zero (a head's output set to 0) or mean (to its mean over tokens)"
    )
    batch: int = Field(
        16,
        ge=1,
        le=MAX_ABLATION_BATCH,
        description=f"ablated copies per forward (1 to {MAX_ABLATION_BATCH}; at most the "
        "server's max_batch_size are run)",
    )


class LensOptions(BaseModel):
    """The options of one logit lens request; the body is the model's input as PNG."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, frozen=True)

    top_k: int = Field(
        5, ge=1, le=MAX_LENS_TOP_K, description=f"top classes per layer (1 to {MAX_LENS_TOP_K})"
    )


class NormsOptions(BaseModel):
    """The options of one token norms request; the body is the model's input as PNG."""

    model_config = ConfigDict(populate_by_name=True, coerce_numbers_to_str=True, frozen=True)

    k: float = Field(
        3.0,
        gt=1.0,
        le=MAX_NORMS_K,
        allow_inf_nan=False,
        description="outlier factor: a patch above k × its layer's median patch norm "
        f"(above 1, at most {MAX_NORMS_K:g})",
    )


OPTION_MODELS: tuple[type[BaseModel], ...] = (
    ExplainOptions,
    TrustOptions,
    TextRelevanceOptions,
    AblationOptions,
    LensOptions,
    NormsOptions,
)
"""Every endpoint's options (where :func:`refusal` finds a field's choices)."""


def choices(model: type[BaseModel], name: str) -> tuple[str, ...]:
    """The values a field of ``model`` declared as a ``Literal`` takes."""
    return tuple(get_args(model.model_fields[name].annotation))


def refusal(
    errors: Sequence[Mapping[str, Any]], model: type[BaseModel] | None = None
) -> tuple[int, str]:
    """The HTTP status and message for options that failed validation.

    ``errors``: pydantic's (or FastAPI's, whose locations start with ``query``). A value of
    the wrong type or out of its bounds gets 422 and every such problem; otherwise the first
    value that is not among its field's choices gets 400 and the choices, read from
    ``model``'s declaration (default: the first of :data:`OPTION_MODELS` with a field of that
    name whose choices are declared).
    """
    wrong_type, not_a_choice = [], []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        if loc and loc[0] in ("query", "body", "path", "header"):
            loc = loc[1:]
        where = ".".join(loc) or "request"
        target = not_a_choice if e.get("type") == "literal_error" and len(loc) == 1 else wrong_type
        target.append((where, e))
    if wrong_type:
        problems = "; ".join(f"{where}: {e['msg']}" for where, e in wrong_type)
        return 422, f"invalid options: {problems}"
    where, _ = not_a_choice[0]
    values: tuple[str, ...] = ()
    for candidate in (model,) if model else OPTION_MODELS:
        for n, f in candidate.model_fields.items():
            if where in (n, f.alias) and not values and get_origin(f.annotation) is Literal:
                values = choices(candidate, n)
    if not values:
        return 422, f"invalid options: {where}: {not_a_choice[0][1]['msg']}"
    either = ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]
    return 400, f"{where} must be {either}"


class Settings(BaseModel):
    """How a server runs: its model and its limits.

    Attributes:
        model: curated key, timm name or path (see :func:`vitviz.models.load_model`).
        weights: local weights file on the server.
        random_weights: no trained weights (architecture tests and benchmarks only).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16``.
        labels: a CLIP model's classes (a list, or one comma-separated text; None: its
            default everyday labels); checked like every typed label (:mod:`vitviz.inputs.prompts`).
        template: a CLIP model's prompt template (None: ``a photo of a {}.``).
        max_batch_size: most images explained in one forward pass.
        batch_wait_s: how long a batch waits to fill up.
        queue_limit: requests a replica accepts at once; more get 503 with Retry-After.
        retry_after_s: the Retry-After a busy replica answers.
        timeout_s: longest a request may wait and compute before it gets 504.
        max_upload_bytes: largest request body.
        upload_timeout_s: longest a client may take to send its body (then 408); the body is
            read before the request takes a queue slot, so slow uploads never block others.
        max_uploads: bodies being received at once (more get 503), so slow clients cannot
            hold unbounded memory or connections.
        max_answer_bytes: largest answer; a request whose answer would be larger (many
            classes with full gradients, say) is refused with 400 before any work.
        max_pixels: largest decoded image (width × height).
        max_work_bytes: most bytes one head ablation, logit lens or token norms request may
            hold while it runs (:mod:`vitviz.memory.cost`), checked before the work; more is
            refused with 400 ``work_too_large`` naming the size. Default: ``$VITVIZ_MAX_WORK_MB``
            (MiB) when set, else :data:`DEFAULT_MAX_WORK_BYTES`.
        token: bearer token every API request but health must carry (None: each replica
            reads ``$VITVIZ_TOKEN``; empty: open).
        require_token: a replica without a token refuses to start (so a node whose
            environment lacks ``VITVIZ_TOKEN`` cannot serve an open replica).
        threads: CPU threads for torch (0: all cores).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "vit-b16"
    weights: str | None = None
    random_weights: bool = False
    device: str = "auto"
    precision: str = "auto"
    labels: list[str] | str | None = None
    template: str | None = None
    max_batch_size: int = 16
    batch_wait_s: float = 0.01
    queue_limit: int = 64
    retry_after_s: int = 2
    timeout_s: float = 60.0
    max_upload_bytes: int = 20 * 1024 * 1024
    upload_timeout_s: float = 15.0
    max_uploads: int = 128
    max_answer_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_work_bytes: int = Field(default_factory=default_work_bytes, gt=0)
    token: str | None = Field(None, repr=False)
    require_token: bool = False
    threads: int = 0

    def resolve_token(self) -> None:
        """Take the token from ``$VITVIZ_TOKEN`` unless given; enforce ``require_token``."""
        if self.token is None:
            self.token = os.environ.get("VITVIZ_TOKEN") or None
        if self.require_token and not self.token:
            raise RuntimeError(
                "require_token is set but this replica has no token: export VITVIZ_TOKEN "
                "where the replica runs (before `ray start` on every node) or pass token"
            )

    def limits(self) -> dict[str, Any]:
        """The limits clients may read (never the token)."""
        return {
            "max_batch_size": self.max_batch_size,
            "queue_limit": self.queue_limit,
            "timeout_s": self.timeout_s,
            "max_upload_bytes": self.max_upload_bytes,
            "upload_timeout_s": self.upload_timeout_s,
            "max_answer_bytes": self.max_answer_bytes,
            "max_pixels": min(self.max_pixels, images.MAX_PIXELS),
            "max_work_bytes": self.max_work_bytes,
            "token_required": bool(self.token),
        }


class AppArgs(Settings):
    """``build_app``'s args: :class:`Settings` plus how Serve places the replicas.

    Attributes:
        replicas: a number, or ``auto`` to autoscale between 1 and the number of GPUs
            (None: one per GPU, or 1 without GPUs).
        gpus_per_replica: GPUs of one replica (None: 1 with GPUs, else 0).
        cpus_per_replica: CPUs of one replica.
    """

    replicas: int | Literal["auto"] | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float = 1.0

    @classmethod
    def parse(cls, args: Mapping[str, Any] | AppArgs) -> AppArgs:
        """Validate a Serve config's (or the command line's) args; unknown names are a
        ``ValueError`` that names them."""
        if isinstance(args, AppArgs):
            return args
        unknown = set(args) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown server options: {', '.join(sorted(unknown))}")
        return cls.model_validate(dict(args))

    def settings(self) -> Settings:
        """The replicas' :class:`Settings` (every field but the placement's)."""
        return Settings.model_validate(self.model_dump(include=set(Settings.model_fields)))
