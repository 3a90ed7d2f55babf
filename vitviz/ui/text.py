"""Untrusted text in Streamlit's Markdown: names typed or linked by a visitor, file names, errors.

Streamlit renders most strings as Markdown (with ``:color[…]`` directives, emoji shortcodes and
``$…$`` math, and bare addresses turned into links), so a model name from a link such as
``[Sign in](https://evil.example)`` would become a working link in the page. :func:`plain`
shows such text as typed.
"""

from __future__ import annotations

import re

_MARKUP = re.compile(r"[!-/:-@\[-`{-~]")  # every ASCII punctuation mark: all may be escaped
# what GitHub-flavoured Markdown links even when escaped: "http://", "www.", "name@host"
_AUTOLINK = re.compile(r"(?i)(?<![a-z])(https?|ftp|www)|@")
WORD_JOINER = "\u2060"  # invisible, but no address starts across it


def plain(text: object) -> str:
    """``text`` shown as typed: Markdown characters backslash-escaped, addresses not linked."""
    text = _AUTOLINK.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], str(text))
    return _MARKUP.sub(lambda m: "\\" + m.group(0), text).replace("\n", "  \n")
