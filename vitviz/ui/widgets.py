"""Page widgets made from the method registry's option specs.

A method's options (:class:`vitviz.methods.Option`) say their kind, range, step, label and
help, so one function draws any of them: a new method's options appear on the page with no
page code of their own.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from vitviz.methods import Method, Option
from vitviz.ui import i18n
from vitviz.ui.i18n import t


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
) -> Any:
    """Draw one option's widget in ``where`` and return its value (stored under ``key``)."""
    fresh = key not in st.session_state  # a widget's default only when the state has none
    common = {"key": key, "help": option_help(option), "disabled": disabled}
    common["persist_state"] = "session"
    title = option_title(option)
    if option.kind == "layer":
        default = option.default % layers if isinstance(option.default, int) else layers - 1
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
) -> dict[str, Any]:
    """Values for all of a method's options: ``shared`` ones as given (the view's own
    controls), a widget keyed ``prefix-name`` for each other one."""
    values = {}
    others = [o for o in method.options if o.name not in shared]
    columns = where.columns(len(others)) if others else []
    for option, column in zip(others, columns, strict=True):
        values[option.name] = option_widget(
            option,
            f"{prefix}-{option.name}",
            layers=layers,
            heads=heads,
            patches=patches,
            where=column,
        )
    return {o.name: shared.get(o.name, values.get(o.name)) for o in method.options}


def class_picker(ctx: Any, key: str = "target_class") -> int:
    """Pick the class to explain: the top-5 first, then every label (type to search).

    A new image or model starts on its top class.
    """
    from vitviz.classes import probabilities, ranked

    labels = ctx.labels
    top = ctx.top_classes
    probs = probabilities(ctx.expl.logits)
    context = ctx.model_id + ctx.image_digest
    if st.session_state.get("class_context") != context or st.session_state.get(key) not in range(
        len(labels)
    ):
        st.session_state["class_context"] = context
        st.session_state[key] = top[0]
    return st.selectbox(
        t("widgets.class_picker"),
        ranked(labels, top),
        format_func=_names(
            range(len(labels)),
            lambda i: f"{i18n.class_label(labels[i], i, both=True)} — {probs[i]:.1%}",
        ),
        key=key,
        persist_state="session",
    )


def overlay_download(ctx: Any, values: Any, title: str, where: Any = st) -> None:
    """A server-rendered PNG of one map over the image (inferno, opacity 0.6), for saving."""
    from vitviz import render

    image, name = ctx.expl.image, f"{ctx.stem}-{title}.png"
    where.download_button(
        t("widgets.overlay_png"),
        data=lambda: render.to_png(render.overlay(image, values, alpha=0.6)),
        file_name=name,
        mime="image/png",
        on_click="ignore",
        key=f"dl-png-{title}",
    )


def why_toggle(ctx: Any, label: str, key: str, where: Any = st) -> bool:
    """The "why this class?" switch (off and disabled for a model without a classifier)."""
    on = where.toggle(
        label,
        key=key,
        disabled=not ctx.expl.predictions,
        help=t("widgets.why_help"),
        persist_state="session",
    )
    return bool(on and ctx.expl.predictions)
