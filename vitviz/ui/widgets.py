"""Page widgets made from the method registry's option specs.

A method's options (:class:`vitviz.methods.Option`) say their kind, range, step, label and
help, so one function draws any of them: a new method's options appear on the page with no
page code of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from vitviz.methods import Method, Option
from vitviz.results import FEATURE_NORM, FEATURE_NORM_LABEL
from vitviz.ui import i18n
from vitviz.ui.i18n import t
from vitviz.ui.text import plain


def _names(values: Any, name: Any) -> Any:
    """A widget's format function: each value's words, made now (in this run's language;
    AppTest calls format functions after the run)."""
    return {v: name(v) for v in values}.get


def option_title(option: Option) -> str:
    """An option's label in the page's language (a plugin's own label when it has none)."""
    key = f"option.{option.name}.title"
    return t(key) if i18n.has(key) else option.title


def option_help(option: Option) -> str:
    """An option's tooltip in the page's language."""
    key = f"option.{option.name}.help"
    return t(key) if i18n.has(key) else option.help


def choice_label(value: str) -> str:
    """A choice's value in words (``mean`` → 平均 in zh-Hant)."""
    key = f"choice.{value}"
    return t(key) if i18n.has(key) else value


def method_title(name: str, title: str) -> str:
    """A method's title in the page's language."""
    key = f"method.{name}"
    return t(key) if i18n.has(key) else title


def head_label(head: int | None) -> str:
    """A head choice in words."""
    return t("widgets.all_heads") if head is None else t("widgets.head_n", head=head)


def option_widget(
    option: Option,
    key: str,
    *,
    layers: int,
    heads: int,
    patches: int,
    where: Any = st,
    disabled: bool = False,
    url: bool = False,
) -> Any:
    """Draw one option's widget in ``where`` and return its value (stored under ``key``).

    ``url``: the value lives in the URL under ``key`` (left out at its default): a link's
    valid value opens the widget on a session's first run; anything else is ignored.
    """
    from vitviz.ui import session

    if url:
        text = st.query_params.get(key)
        session.seed(key, session.option_from_url(option, text, layers, heads, patches))
    value = _option_widget(
        option, key, layers=layers, heads=heads, patches=patches, where=where, disabled=disabled
    )
    if url:
        default = session.option_default(option, layers)
        session.keep_in_url(key, session.url_text(value), session.url_text(default))
    return value


def _option_widget(
    option: Option,
    key: str,
    *,
    layers: int,
    heads: int,
    patches: int,
    where: Any,
    disabled: bool,
) -> Any:
    fresh = key not in st.session_state  # a widget's default only when the state has none
    common = {"key": key, "help": option_help(option), "disabled": disabled}
    common["persist_state"] = "session"
    title = option_title(option)
    if option.kind == "layer":
        default = option.default % layers if isinstance(option.default, int) else layers - 1
        depth_key = f"{key}--depth"  # another model: a layer counted from the end follows it
        if not fresh and st.session_state.get(depth_key, layers) != layers:
            value = st.session_state[key]
            from_end = isinstance(option.default, int) and option.default < 0
            if from_end or not isinstance(value, int) or not 0 <= value < layers:
                st.session_state[key] = default
        st.session_state[depth_key] = layers
        extra = {"value": default} if fresh else {}
        return where.slider(title, 0, layers - 1, **extra, **common)
    if option.kind == "head":
        return where.selectbox(
            title,
            [None, *range(heads)],
            format_func=_names([None, *range(heads)], head_label),
            **common,
        )
    if option.kind == "patch":
        extra = {"value": int(option.default)} if fresh else {}
        return where.number_input(title, 0, patches - 1, step=1, **extra, **common)
    if option.kind == "number":
        low = float(option.low if option.low is not None else 0.0)
        high = float(option.high if option.high is not None else 1.0)
        extra = {"value": float(option.default)} if fresh else {}
        step = float(option.step) if option.step else None
        return where.slider(title, low, high, step=step, **extra, **common)
    if option.kind == "flag":
        extra = {"value": bool(option.default)} if fresh else {}
        return where.toggle(title, **extra, **common)
    extra = {"default": option.default} if fresh else {}
    value = where.segmented_control(
        title,
        list(option.choices),
        format_func=_names(option.choices, choice_label),
        required=True,
        **extra,
        **common,
    )
    return option.default if value is None else value


def method_options(
    method: Method,
    prefix: str,
    shared: dict[str, Any],
    *,
    layers: int,
    heads: int,
    patches: int,
    where: Any = st,
    url: bool = False,
) -> dict[str, Any]:
    """Values for all of a method's options: ``shared`` ones as given (the view's own
    controls), a widget keyed ``prefix-name`` for each other one (in the URL by that key
    when ``url``)."""
    values = {}
    others = [o for o in method.options if o.name not in shared]
    # two a row: a segmented control's buttons (fusion: mean/max/min) never get cut off
    columns = [col for i in range(0, len(others), 2) for col in where.columns(2)][: len(others)]
    for option, column in zip(others, columns, strict=True):
        values[option.name] = option_widget(
            option,
            f"{prefix}-{option.name}",
            layers=layers,
            heads=heads,
            patches=patches,
            where=column,
            url=url,
        )
    return {o.name: shared.get(o.name, values.get(o.name)) for o in method.options}


def class_picker(ctx: Any, key: str = "target_class", url: bool = False) -> int:
    """Pick the class to explain: the top-5 first, then every label (type to search).

    A new image or model starts on its top class (or, with ``url``, on a session's first
    run, the link's class when it is one of the model's). A backbone without a classifier
    has one class-free target, the norm of its readout feature (said in a caption).
    """
    from vitviz.inputs.classes import probabilities, ranked

    labels = ctx.labels
    if not labels:
        st.caption(t("widgets.feature_norm_note"))
        return FEATURE_NORM
    short = not ctx.info.label_set  # typed classes (CLIP) are shown whole, commas and all
    top = ctx.top_classes
    probs = probabilities(ctx.expl.logits)
    context = ctx.model_id + ctx.image_digest
    if st.session_state.get("class_context") != context or st.session_state.get(key) not in range(
        len(labels)
    ):
        linked = (
            st.query_params.get(key) if url and "class_context" not in st.session_state else None
        )
        st.session_state["class_context"] = context
        st.session_state[key] = int(linked) if linked in map(str, range(len(labels))) else top[0]
    chosen = st.selectbox(
        t("widgets.class_picker"),
        ranked(labels, top),
        format_func=_names(
            range(len(labels)),
            lambda i: f"{i18n.class_label(labels[i], i, both=True, short=short)} — {probs[i]:.1%}",
        ),
        key=key,
        persist_state="session",
    )
    if url:
        from vitviz.ui import session

        session.keep_in_url(key, str(chosen), str(top[0]))
    return chosen


def map_settings(
    ctx: Any, view: str, method: str, options: dict[str, Any], cls: int | None = None
) -> dict[str, Any]:
    """Every setting of a map a view shows (:func:`vitviz.output.exports.make_settings`): the model
    as :func:`~vitviz.ui.downloads.public_info` tells it (no directory of this machine), the
    image's name, the view, the method with all its options, the class of a class-specific
    map, and the canvas's default colormap and opacity the exported figure is drawn with."""
    from vitviz import methods
    from vitviz.output import exports
    from vitviz.output.provenance import public_info
    from vitviz.ui.canvas import DISPLAY_DEFAULTS

    return exports.make_settings(
        public_info(ctx.info),
        image=ctx.image_name,
        method=method,
        options=methods.resolve_options(method, options),
        layout=ctx.layout,
        view=view,
        target=None if cls is None else (cls, _target_label(ctx.labels, cls)),
        colormap=DISPLAY_DEFAULTS["colormap"],
        alpha=DISPLAY_DEFAULTS["alpha"],
        smooth=DISPLAY_DEFAULTS["smooth"],
        typed=_typed(ctx),
    )


def _typed(ctx: Any) -> tuple[list[str], str] | None:
    """The typed classes and prompt of a CLIP model (None for fixed classes)."""
    template = ctx.backend.template
    if not ctx.info.label_set or template is None:
        return None
    return list(ctx.labels), str(template)


def _target_label(labels: list[str], cls: int) -> str:
    """A class's name, or the class-free target's for a backbone."""
    return labels[cls] if 0 <= cls < len(labels) else FEATURE_NORM_LABEL


def map_exports(
    ctx: Any,
    values: Any,
    title: str,
    settings: dict[str, Any],
    where: Any = st,
    *,
    heading: str | None = None,
    others: Sequence[tuple[Any, str, dict[str, Any], str]] = (),
    inline: bool = False,
) -> None:
    """The shown maps' exports in one small "Export" popover: for each map the figure with
    its colour legend and a caption of the settings (PNG at a chosen width, SVG) and the
    values with every setting (CSV, npz). Each file is made only when its button is clicked,
    and a download never reruns the page.

    ``others``: further maps shown beside the first, each ``(values, title, settings,
    heading)``; with any, each map's buttons come under its ``heading``. ``inline``: an
    expander instead of the popover (open, it pushes what follows down, covering nothing).
    """
    from functools import partial

    from vitviz.output import exports

    if inline:
        box = where.expander(t("exports.button"), key=f"export-{title}", icon=":material/download:")
        box.caption(t("exports.help"))
    else:
        box = where.popover(t("exports.button"), help=t("exports.help"), key=f"export-{title}")
    widths = list(exports.FIGURE_WIDTHS)
    if st.session_state.get("export_width") not in widths:
        st.session_state["export_width"] = exports.FIGURE_WIDTH
    width = box.segmented_control(
        t("exports.width"),
        widths,
        format_func=_names(widths, lambda w: t("exports.width_px", width=w)),
        key="export_width",
        required=True,
        help=t("exports.width_help", default=exports.FIGURE_WIDTH),
        persist_state="session",
    )
    width = width if width in widths else exports.FIGURE_WIDTH
    maps = [(values, title, settings, heading), *others]
    for grid, name, how, head in maps:
        if len(maps) > 1:
            box.markdown(f"**{plain(head or name)}**")
        stem = f"{ctx.stem}-{name}"
        files = (
            (
                "png",
                t("exports.figure_png"),
                f"{stem}.png",
                "image/png",
                partial(exports.figure_png, width=width),
            ),
            ("svg", t("exports.figure_svg"), f"{stem}.svg", "image/svg+xml", exports.figure_svg),
            ("csv", t("exports.values_csv"), f"{stem}-values.csv", "text/csv", exports.values_csv),
            (
                "npz",
                t("exports.values_npz"),
                f"{stem}-values.npz",
                "application/octet-stream",
                exports.values_npz,
            ),
        )
        for kind, label, file_name, mime, make in files:
            box.download_button(
                label,
                data=partial(make, grid, ctx.expl.image, how),
                file_name=file_name,
                mime=mime,
                on_click="ignore",
                key=f"dl-{kind}-{name}",
            )


def why_toggle(ctx: Any, label: str, key: str, where: Any = st, url: bool = False) -> bool:
    """The "why this class?" switch (for a backbone: why this feature, class-free); in the
    URL under ``key`` when on and ``url``."""
    from vitviz.ui import session

    if url:
        session.flag(key)
    on = where.toggle(
        label,
        key=key,
        help=t("widgets.why_help" if ctx.labels else "widgets.why_help_backbone"),
        persist_state="session",
    )
    if url:
        session.keep_flag(key, bool(on))
    return bool(on)


def download_row(key: str, files: Sequence[tuple[str, str, Callable[[], Any], str]]) -> None:
    """One download button per ``(label, file name, data, MIME type)``, side by side (widget
    keys ``dl-KEY-EXT``); the data is made when the button is clicked, and a click does not
    rerun the page."""
    for column, (label, name, data, mime) in zip(st.columns(len(files)), files, strict=True):
        column.download_button(
            label,
            data=data,
            file_name=name,
            mime=mime,
            on_click="ignore",
            key=f"dl-{key}-{name.rsplit('.', 1)[-1]}",
        )
