"""The one registry of map methods: name, title, options (typed, with ranges and help), kind
(what a caller needs to give it and what it shows) and display order.

Every method is a *row function* ``fn(attn, layout, *, grads=None, **options) -> [..., N]``:
the readout's (or a query's) row over all N tokens, prefix tokens included. The registry
turns rows into maps (:func:`compute_map`), and the CLI, the page, live, trust, Compare and
the server list the methods, their titles and their options from here, filtered by kind
(:func:`of_kind`) and sorted by order, so a new method is one function plus one
:func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.methods.arrays import FUSIONS, Array, head_index, layer_index, layer_span, to_grid
from vitviz.results import ClassRelevance

OptionKind = Literal["layer", "head", "patch", "number", "flag", "choice"]
MethodKind = Literal["attention", "class", "query", "mask"]
GradientSpan = Literal["layer", "span"]

KINDS: dict[str, str] = {
    "attention": "class-agnostic: a whole-image map from the attention alone",
    "class": "class-specific: needs the attention gradients for a class",
    "query": "one patch's map: needs a patch",
    "mask": "a binary mask of the patches",
}
"""Each method kind and what it means (the keys are :data:`MethodKind`'s values)."""

WHOLE_IMAGE: tuple[MethodKind, ...] = ("attention", "class")
"""The kinds of graded whole-image maps: what trust curves judge and compare."""

DEFAULT_METHOD = "rollout"
"""The method the CLI, Compare and the live view open with."""

DEFAULT_ORDER = 1000
"""The order of a method registered without one: after every built-in method."""


@dataclass(frozen=True)
class Option:
    """One option of a method.

    Attributes:
        name: keyword of the row function (``start_layer``); the CLI flag is ``--start-layer``.
        kind: ``layer`` (index, negative from the end), ``head`` (index or None for fused),
            ``patch`` (index on the grid), ``number`` (a float in ``[low, high]``), ``flag``
            (bool) or ``choice`` (one of ``choices``).
        default: the value when not given.
        help: one line for ``--help`` and the page's tooltips.
        low, high, step: the range the page's slider offers (and its step).
        choices: a choice's values.
        label: a short label for the page (default: the name in words).
    """

    name: str
    kind: OptionKind
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    label: str = ""

    @property
    def title(self) -> str:
        """The page's label for this option."""
        return self.label or self.name.replace("_", " ").capitalize()

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, num_layers: int | None = None, num_heads: int | None = None) -> Any:
        """``value`` if a layer or head exists in the model, else an :class:`OptionsError`."""
        if self.kind == "layer" and num_layers is not None:
            layer_index(int(value), num_layers)
        elif self.kind == "head" and num_heads is not None:
            head_index(value, num_heads)
        return value  # values are checked by the method itself, which knows why


@dataclass(frozen=True)
class Method:
    """A registered map method (see the module docstring for the function's shape).

    Attributes:
        kind: what it needs and shows (:data:`KINDS`): ``attention`` (class-agnostic),
            ``class`` (class-specific: needs gradients), ``query`` (one patch's) or ``mask``.
        order: where pickers and listings put it (lower first; ties in registration order).
        gradients: which layers' gradients a class-specific method reads: ``layer`` (its
            ``layer`` option's) or ``span`` (its ``start_layer`` to ``end_layer``, all layers
            where it has neither option).
    """

    name: str
    title: str
    description: str
    fn: Callable[..., Any]
    options: tuple[Option, ...] = ()
    kind: MethodKind = "attention"
    order: int = DEFAULT_ORDER
    gradients: GradientSpan = "span"

    @property
    def needs_gradients(self) -> bool:
        """Whether it is class-specific (needs the attention gradients for a class)."""
        return self.kind == "class"

    @property
    def defaults(self) -> dict[str, Any]:
        """Each option's default."""
        return {o.name: o.default for o in self.options}

    def option(self, name: str) -> Option:
        """The option called ``name``."""
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def gradient_layers(self, options: dict[str, Any], num_layers: int) -> list[int]:
        """Layers whose attention gradients this method reads (empty if class-agnostic)."""
        if not self.needs_gradients:
            return []
        if self.gradients == "layer":
            return [layer_index(options.get("layer", self.defaults["layer"]), num_layers)]
        start = layer_index(options.get("start_layer", 0), num_layers)
        end = layer_index(options.get("end_layer", -1), num_layers)
        return list(range(start, max(start, end) + 1))

    def negative(self, options: dict[str, Any]) -> bool:
        """Whether this method explains "why not" the class (the gradient's negative part)."""
        return bool(self.needs_gradients and options.get("negative", False))


METHODS: dict[str, Method] = {}
"""Every method by name, in display order (:attr:`Method.order`)."""


def register(
    name: str,
    title: str,
    description: str,
    options: tuple[Option, ...] = (),
    *,
    kind: MethodKind | None = None,
    order: int = DEFAULT_ORDER,
    gradients: GradientSpan = "span",
    needs_gradients: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a row function under ``name`` (returns the function unchanged).

    ``kind`` defaults to ``class`` with ``needs_gradients=True`` (its older spelling), else
    to ``attention``; ``order`` places it in every picker and listing.
    """
    chosen: MethodKind = kind or ("class" if needs_gradients else "attention")
    if chosen not in KINDS:
        raise ValueError(f"method {name!r}: unknown kind {chosen!r} (one of {', '.join(KINDS)})")
    if needs_gradients and chosen != "class":
        raise ValueError(f"method {name!r}: needs_gradients=True is kind 'class', not {chosen!r}")
    if gradients not in ("layer", "span"):
        raise ValueError(f"method {name!r}: gradients must be 'layer' or 'span', not {gradients!r}")
    if gradients == "layer" and all(o.name != "layer" for o in options):
        raise ValueError(f"method {name!r} reads its layer's gradients but has no layer option")

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        METHODS[name] = Method(
            name, title, description, fn, tuple(options), chosen, int(order), gradients
        )
        ranked = sorted(METHODS.items(), key=lambda item: item[1].order)  # stable: ties stay
        METHODS.clear()
        METHODS.update(ranked)
        return fn

    return add


def of_kind(*kinds: MethodKind) -> dict[str, Method]:
    """The registered methods of these kinds (all with none given), in display order; read
    at each call, so methods registered later are included."""
    return {n: m for n, m in METHODS.items() if not kinds or m.kind in kinds}


def first_of_kind(kind: MethodKind) -> str:
    """The name of the first method of ``kind`` in display order (the one a view shows)."""
    for name, method in METHODS.items():
        if method.kind == kind:
            return name
    raise KeyError(f"no method of kind {kind!r} is registered")


def resolve_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's full options: its defaults updated with ``options`` (unknown → error)."""
    if method not in METHODS:
        raise OptionsError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise OptionsError(
            f"method {method!r} takes no option {', '.join(unknown)}; "
            f"its options are {', '.join(spec.defaults) or 'none'}"
        )
    return {**spec.defaults, **options}


def check_options(options: dict[str, Any], num_layers: int, num_heads: int) -> None:
    """Check layer-like and head options against a model before any image is run."""
    for method in METHODS.values():
        for o in method.options:
            if o.name in options and options[o.name] is not None:
                o.check(options[o.name], num_layers, num_heads)
    if options.get("end_layer") is not None:  # a span, checked before any image is run
        layer_span(int(options.get("start_layer") or 0), int(options["end_layer"]), num_layers)


def compute_row(
    method: str,
    attn: Array,
    layout: TokenLayout,
    *,
    grads: Array | ClassRelevance | None = None,
    **options: Any,
) -> Array:
    """Run a registered method by name with validated options: a row ``[..., N]``.

    Class-specific methods need ``grads``: ``∂y_c/∂A`` or its
    :class:`~vitviz.results.ClassRelevance` (what
    :meth:`vitviz.backends.local.LocalBackend.explain_classes` returns).
    """
    resolved = resolve_options(method, options)
    spec = METHODS[method]
    if spec.needs_gradients and grads is None:
        raise OptionsError(
            f"method {method!r} is class-specific: it needs the attention gradients for a "
            "class (LocalBackend.explain_classes computes them)"
        )
    if not spec.needs_gradients:
        grads = None  # class-agnostic: gradients play no part
    return spec.fn(attn, layout, grads=grads, **resolved)


def compute_map(
    method: str,
    attn: Array,
    layout: TokenLayout,
    *,
    grads: Array | ClassRelevance | None = None,
    **options: Any,
) -> Array:
    """:func:`compute_row`'s patch part on the grid: ``[..., gh, gw]``."""
    return to_grid(compute_row(method, attn, layout, grads=grads, **options), layout)


def compute_strip(
    method: str,
    attn: Array,
    layout: TokenLayout,
    *,
    grads: Array | ClassRelevance | None = None,
    **options: Any,
) -> tuple[list[int], Array]:
    """The layer strip of a method with an end layer: its row "up to layer e" for every e
    from the start layer to the last, ``(layers, rows [..., K, N])``."""
    spec = METHODS.get(method)
    if spec is None or "end_layer" not in spec.defaults:
        raise OptionsError(f"method {method!r} has no end layer, so it has no layer strip")
    num_layers = int(attn.shape[-4])
    start = layer_index(int(options.get("start_layer", 0)), num_layers)
    layers = list(range(start, num_layers))
    rows = [
        compute_row(method, attn, layout, grads=grads, **{**options, "end_layer": e})
        for e in layers
    ]
    if isinstance(rows[0], np.ndarray):
        return layers, np.stack(rows, axis=-2)
    import torch

    return layers, torch.stack(rows, dim=-2)


# Options several methods share.
LAYER = Option(
    "layer", "layer", -1, "layer, counted from 0 like everywhere in vitviz (negative: from the end)"
)
HEAD = Option("head", "head", None, "one head, counted from 0 (default: all heads fused)")
FUSION = Option(
    "fusion", "choice", "mean", "how heads are fused", choices=FUSIONS, label="Head fusion"
)
DISCARD = Option(
    "discard",
    "number",
    0.0,
    "share of each fused layer's lowest entries zeroed before rolling out",
    low=0.0,
    high=0.95,
    step=0.05,
    label="Discard ratio",
)
START_LAYER = Option("start_layer", "layer", 0, "first layer of the rollout, counted from 0")
END_LAYER = Option(
    "end_layer",
    "layer",
    -1,
    "last layer of the rollout, counted from 0: the map 'up to layer l' (default: the last)",
)
NEGATIVE = Option(
    "negative",
    "flag",
    False,
    "why NOT this class: keep the negative part of attention × gradient (evidence against it)",
    label="Why not",
)
