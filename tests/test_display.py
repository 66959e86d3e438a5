"""What an approver reads: nothing in it can hide or reorder the rest (property tests)."""

from __future__ import annotations

import unicodedata

from b24agent.display import for_a_person
from hypothesis import given
from hypothesis import strategies as st

HIDDEN = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


@given(st.text())
def test_no_character_that_hides_or_reorders_text_survives(text: str) -> None:
    shown = for_a_person(text)
    assert all(ch == "\n" or unicodedata.category(ch) not in HIDDEN for ch in shown)


@given(st.text(alphabet=st.characters(exclude_categories=tuple(HIDDEN))))
def test_visible_text_and_line_breaks_are_shown_as_they_are(text: str) -> None:
    assert for_a_person(text) == text
    assert for_a_person(text + "\n" + text) == text + "\n" + text


def test_overrides_and_c1_controls_become_escapes() -> None:
    assert for_a_person("a\u202eb\u009bc\u200bd\te") == "a\\u202eb\\u009bc\\u200bd\\u0009e"
