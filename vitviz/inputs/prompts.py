"""Typed class labels and their prompt template (CLIP zero-shot): untrusted text, checked.

Labels come from the page, the command line, a file or a server's settings, so every one is
checked before any text is encoded: at most :data:`MAX_LABELS` labels of 1–:data:`MAX_LABEL_CHARS`
characters after stripping, no control characters, duplicates dropped (the first kept, order
kept); a template of at most :data:`MAX_TEMPLATE_CHARS` characters with exactly one ``{}``
where the label goes. Each violation is an :class:`~vitviz.errors.OptionsError` that says what
was wrong and what to do. Plain Python (no torch), so clients can check before they send.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from vitviz.errors import OptionsError

MAX_LABELS = 64
MAX_LABEL_CHARS = 80
MAX_TEMPLATE_CHARS = 120
MAX_LABEL_FILE_BYTES = 64 * 1024
DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_LABELS: tuple[str, ...] = (
    "cat",
    "dog",
    "bird",
    "car",
    "bicycle",
    "person",
    "tree",
    "house",
    "cup",
    "teapot",
)
"""Everyday classes used when a CLIP model is loaded without typed labels."""

# bidirectional overrides and isolates can make text read differently from what it encodes
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _bad_character(text: str) -> str | None:
    """The first control character of ``text`` (as ``U+XXXX``), if any."""
    for ch in text:
        category = unicodedata.category(ch)
        # format characters (zero-width spaces, BOMs) make two labels look alike; the
        # joiners that scripts need (ZWJ, ZWNJ) stay allowed
        invisible = category == "Cf" and ch not in ("\u200c", "\u200d")
        if category in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI or invisible:
            return f"U+{ord(ch):04X}"
    return None


def check_labels(labels: Iterable[str]) -> list[str]:
    """The labels stripped, duplicates dropped (order kept), each one checked.

    Raises:
        OptionsError: not text, empty, too long, a control character, none or too many.
    """
    if isinstance(labels, str):
        raise OptionsError("labels must be a list of texts, not one text; split it first")
    out: list[str] = []
    for i, raw in enumerate(labels, start=1):
        if len(out) > MAX_LABELS:  # stop reading a huge list early
            break
        if not isinstance(raw, str):
            raise OptionsError(f"label {i} is not text ({type(raw).__name__}); type words")
        label = raw.strip()
        if not label:
            raise OptionsError(f"label {i} is empty; remove it or type a class name")
        if len(label) > MAX_LABEL_CHARS:
            raise OptionsError(
                f"label {i} ({label[:20]}…) has {len(label)} characters, over the limit of "
                f"{MAX_LABEL_CHARS}; shorten it"
            )
        bad = _bad_character(label)
        if bad:
            raise OptionsError(
                f"label {i} ({label[:20]!r}) contains a control character ({bad}); type plain text"
            )
        if label not in out:
            out.append(label)
    if not out:
        raise OptionsError("no labels given; type at least one class name")
    if len(out) > MAX_LABELS:
        raise OptionsError(
            f"more than {MAX_LABELS} labels given; keep at most {MAX_LABELS} (they are all "
            "scored against every image)"
        )
    return out


def check_template(template: str | None) -> str:
    """The prompt template (default :data:`DEFAULT_TEMPLATE`), checked.

    Raises:
        OptionsError: too long, a control character, or not exactly one ``{}``.
    """
    if template is None:
        return DEFAULT_TEMPLATE
    if not isinstance(template, str):
        raise OptionsError(f"the prompt template is not text ({type(template).__name__})")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise OptionsError(
            f"the prompt template has {len(template)} characters, over the limit of "
            f"{MAX_TEMPLATE_CHARS}; shorten it"
        )
    bad = _bad_character(template)
    if bad:
        raise OptionsError(f"the prompt template contains a control character ({bad})")
    if template.count("{}") != 1:
        raise OptionsError(
            f"the prompt template {template!r} must contain exactly one {{}} where the label "
            f'goes (it has {template.count("{}")}), e.g. "{DEFAULT_TEMPLATE}"'
        )
    return template


def prompts(labels: Iterable[str], template: str | None = None) -> list[str]:
    """The text each label is encoded as: the template with the label in place of ``{}``."""
    t = check_template(template)
    return [t.replace("{}", label) for label in check_labels(labels)]


def split_labels(text: str) -> list[str]:
    """Labels from one text: one per line, or comma-separated on one line; blanks dropped."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return [p.strip() for p in parts if p.strip()]


def read_labels(argument: str) -> list[str]:
    """The labels of a ``--labels`` argument, checked: ``"cat,dog,teapot"``, or ``@FILE``
    with one label per line (UTF-8, at most :data:`MAX_LABEL_FILE_BYTES`).

    Raises:
        OptionsError: an unreadable, too large or non-UTF-8 file, or bad labels.
    """
    if argument.startswith("@"):
        path = Path(argument[1:])
        if not path.is_file():
            raise OptionsError(f"--labels {argument}: {path} is not a file; give @FILE")
        size = path.stat().st_size
        if size > MAX_LABEL_FILE_BYTES:
            raise OptionsError(
                f"--labels {argument}: the file has {size} bytes, over the limit of "
                f"{MAX_LABEL_FILE_BYTES}; keep it to at most {MAX_LABELS} short lines"
            )
        try:
            text = path.read_bytes()[:MAX_LABEL_FILE_BYTES].decode("utf-8-sig")
        except UnicodeDecodeError:
            raise OptionsError(f"--labels {argument}: the file is not UTF-8 text") from None
        except OSError as err:
            raise OptionsError(f"--labels {argument}: cannot read it ({err.strerror})") from None
        return check_labels(p.strip() for p in text.splitlines() if p.strip())
    return check_labels(split_labels(argument))


def label_set(labels: Iterable[str], template: str) -> str:
    """A short digest of a label list and its template (equal for equal classes)."""
    blob = json.dumps([template, list(labels)], ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:12]
