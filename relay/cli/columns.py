"""Text fitted to a terminal's columns, not its characters: an East Asian wide or full-width
character (a patient's name in Chinese, Japanese or Korean) takes two columns, a combining
accent none. ``relay sql``'s tables and ``relay preview trigger``'s calendar cut and pad by it."""

from __future__ import annotations

import unicodedata


def _columns(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    """The columns ``text`` takes on a terminal."""
    return sum(_columns(ch) for ch in text)


def cut(text: str, columns: int) -> str:
    """``text`` in at most ``columns`` columns, a cut marked with '…'."""
    if width(text) <= columns:
        return text
    kept, used = [], 0
    for ch in text:
        if used + _columns(ch) > columns - 1:
            break
        kept.append(ch)
        used += _columns(ch)
    return "".join(kept) + "…"


def pad(text: str, columns: int) -> str:
    """``text`` followed by spaces up to ``columns`` columns."""
    return text + " " * max(columns - width(text), 0)
