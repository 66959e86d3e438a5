"""Text shown to a person who decides (an approver reading a plan) made safe to show.

A plan's params and previews are chosen by the agent. Control and format characters in them,
right-to-left overrides, zero-width marks, C1 escape sequences, can hide or reorder what a
terminal or a dialog shows, so the person would approve something other than what they read.
Every such character is shown as its ``\\uXXXX`` escape instead; line breaks stay.
"""

from __future__ import annotations

import unicodedata

__all__ = ["for_a_person"]

#: Unicode categories that draw nothing or change how the rest is drawn.
_HIDDEN = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def for_a_person(text: str) -> str:
    """``text`` with every control, format or unassigned character but ``\\n`` escaped."""
    return "".join(
        f"\\u{ord(ch):04x}" if ch != "\n" and unicodedata.category(ch) in _HIDDEN else ch
        for ch in text
    )
