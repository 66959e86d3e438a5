"""Text shown to a person who decides (an approver reading a plan) made safe to show.

A plan's params and previews are chosen by the agent. Control and format characters in them,
right-to-left overrides, zero-width marks, C1 escape sequences, can hide or reorder what a
terminal or a dialog shows, so the person would approve something other than what they read.
Characters that draw nothing or a blank can make a value look empty or push the rest aside:
the letters Unicode says to draw as nothing (Default_Ignorable_Code_Point outside the control
and format categories: Hangul fillers, variation selectors, ...), the Braille blank, spaces
other than the plain one, and runs of three or more plain spaces inside a line. Every such
character is shown as its ``\\uXXXX`` escape instead; line breaks and the spaces that indent a
line (JSON's indentation) stay.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["for_a_person"]

#: Unicode categories that draw nothing, change how the rest is drawn, or draw a blank that is
#: not the plain space (no-break, em, ideographic spaces: Zs).
_HIDDEN = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"})
#: Characters of other categories that draw nothing (Default_Ignorable_Code_Point in Unicode's
#: DerivedCoreProperties.txt, less its Cc/Cf/Cn members) or a blank (U+2800 BRAILLE PATTERN
#: BLANK).
_BLANK_RANGES = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180D),  # Mongolian free variation selectors
    (0x180F, 0x180F),
    (0x2800, 0x2800),  # Braille pattern blank
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
_BLANK = frozenset(code for first, last in _BLANK_RANGES for code in range(first, last + 1))
#: Three or more plain spaces after something that is not a space or a line break: not
#: indentation, so nothing a person would see the length of.
_LONG_RUN = re.compile(r"(?<=[^\n ]) {3,}")


def for_a_person(text: str) -> str:
    """``text`` with every character that hides, reorders or blanks out escaped (module
    docstring); line breaks, single and double spaces and indentation stay."""
    shown = "".join(f"\\u{ord(ch):04x}" if _hidden(ch) else ch for ch in text)
    return _LONG_RUN.sub(lambda run: "\\u0020" * len(run.group()), shown)


def _hidden(ch: str) -> bool:
    if ch in "\n ":
        return False
    return unicodedata.category(ch) in _HIDDEN or ord(ch) in _BLANK
