"""What an approver reads: nothing in it can hide, reorder or blank out the rest (property
tests)."""

from __future__ import annotations

import json
import re
import unicodedata

from b24agent.display import for_a_person
from hypothesis import given
from hypothesis import strategies as st

HIDDEN = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"}
#: What draws nothing or a blank though its category is a letter, mark or symbol (review6 L6):
#: Hangul fillers, Braille blank, variation selectors, grapheme joiner, Khmer inherent vowels.
BLANK_LETTERS = "\u3164\u115f\u1160\uffa0\u2800\ufe0f\U000e0100\u034f\u17b4\u180b"
#: The same kinds told by their Unicode names, so every member counts, not only the samples.
BLANK_NAMES = (
    "VARIATION SELECTOR",
    "FILLER",
    "BRAILLE PATTERN BLANK",
    "GRAPHEME JOINER",
    "VOWEL INHERENT",
)
LONG_RUN = re.compile(r"[^\n ] {3,}")


def _blank(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return ch in BLANK_LETTERS or any(kind in name for kind in BLANK_NAMES)


def _drawn(ch: str) -> bool:
    return ch in "\n " or (unicodedata.category(ch) not in HIDDEN and not _blank(ch))


@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(BLANK_LETTERS + " "))))
def test_no_character_that_hides_reorders_or_blanks_out_text_survives(text: str) -> None:
    shown = for_a_person(text)
    assert all(_drawn(ch) for ch in shown)
    assert not LONG_RUN.search(shown)


@given(st.text(alphabet=st.characters(exclude_categories=tuple(HIDDEN))))
def test_visible_text_and_line_breaks_are_shown_as_they_are(text: str) -> None:
    text = "".join(ch for ch in text if not _blank(ch))
    assert for_a_person(text) == text
    assert for_a_person(text + "\n" + text) == text + "\n" + text
    assert for_a_person(text + " " + text + "  " + text) == text + " " + text + "  " + text


def test_overrides_and_c1_controls_become_escapes() -> None:
    assert for_a_person("a\u202eb\u009bc\u200bd\te") == "a\\u202eb\\u009bc\\u200bd\\u0009e"


def test_invisible_letters_and_blanks_become_escapes() -> None:
    """A title that looks empty, or pushes the rest of the line aside, shows what is there."""
    title = json.dumps({"TITLE": "\u3164\u115f\u1160\uffa0\u2800"}, ensure_ascii=False)
    assert for_a_person(title) == '{"TITLE": "\\u3164\\u115f\\u1160\\uffa0\\u2800"}'
    assert for_a_person("a\u00a0b\u3000c") == "a\\u00a0b\\u3000c"
    assert for_a_person('"x' + " " * 5 + 'DELETE"') == '"x' + "\\u0020" * 5 + 'DELETE"'


def test_indentation_stays() -> None:
    document = json.dumps({"a": {"b": {"c": [1, {"d": "e f  g"}]}}}, indent=2)
    assert for_a_person(document) == document
