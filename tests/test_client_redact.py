"""Redactor: known secret values and secret-shaped positions are masked in text and JSON."""

from __future__ import annotations

from b24agent.redact import _PATTERNS, MASK, Redactor
from hypothesis import given
from hypothesis import strategies as st

SECRET = "s3cr3t-webhook-code"


def test_known_values_masked_everywhere() -> None:
    redactor = Redactor([SECRET, None, ""])
    assert redactor.mask(f"boom {SECRET}!{SECRET}") == f"boom {MASK}!{MASK}"


def test_secret_positions_masked_without_knowing_the_value() -> None:
    redactor = Redactor()
    text = (
        "https://p.bitrix24.com/rest/1/unknowncode/crm.lead.add "
        "https://p.bitrix24.com/rest/api/7/othercode/tasks.task.add "
        "?auth=tok1&access_token=tok2&refresh_token=tok3&client_secret=tok4 "
        "auth[application_token]=tok5 Authorization: Bearer tok6"
    )
    masked = redactor.mask(text)
    for leaked in ("unknowncode", "othercode", "tok1", "tok2", "tok3", "tok4", "tok5", "tok6"):
        assert leaked not in masked
    assert "/rest/1/***/crm.lead.add" in masked


def test_mask_obj_masks_secret_keys_and_values() -> None:
    redactor = Redactor([SECRET])
    data = {
        "auth": {"application_token": "x", "domain": "p"},
        "REFRESH_TOKEN": "abc",
        "items": [{"note": f"code {SECRET}"}, 5, None],
        "error": {"code": "ERROR_CORE", "message": "fine"},
    }
    assert redactor.mask_obj(data) == {
        "auth": MASK,
        "REFRESH_TOKEN": MASK,
        "items": [{"note": f"code {MASK}"}, 5, None],
        "error": {"code": "ERROR_CORE", "message": "fine"},
    }


def test_rotated_tokens_can_be_added() -> None:
    redactor = Redactor()
    redactor.add("new-access-token-1")
    assert "new-access-token-1" not in redactor.mask("x new-access-token-1 y")


@given(
    st.text(alphabet="ab*", min_size=4, max_size=12),
    st.text(alphabet="ab*", max_size=40),
    st.text(alphabet="ab*", max_size=40),
)
def test_a_known_secret_never_survives_masking(secret: str, before: str, after: str) -> None:
    assert secret not in Redactor([secret]).mask(before + secret + after)


def test_secret_positions_masked_in_any_letter_case() -> None:
    text = "ACCESS_TOKEN=t1 Refresh_Token=t2 AUTH%5D=t3 bearer t4 /rest/9/c5/y"
    masked = Redactor().mask(text)
    assert masked == "ACCESS_TOKEN=*** Refresh_Token=*** AUTH%5D=*** bearer *** /rest/9/***/y"


#: Fragments that start, end or break every secret shape the redactor knows.
_FRAGMENTS = st.sampled_from(
    [
        "/rest/",
        "/rest/api/",
        "1/",
        "42/",
        "code",
        "auth",
        "]=",
        "%5D=",
        "=",
        "access_token",
        "Bearer ",
        "&",
        '"',
        "'",
        " ",
        "x",
        SECRET,
        "s3cr",
        "3t-webhook-code",
        "*",
    ]
)


@given(st.lists(st.lists(_FRAGMENTS, max_size=12).map("".join), min_size=1, max_size=6))
def test_masking_a_block_of_lines_equals_masking_each_line(lines: list[str]) -> None:
    redactor = Redactor([SECRET])
    assert redactor.mask("\n".join(lines)) == "\n".join(redactor.mask(line) for line in lines)


@given(st.lists(_FRAGMENTS | st.sampled_from(["AUTH", "REST", "BEARER", "\t", "client_secret"])))
def test_the_quick_checks_never_skip_a_match(fragments: list[str]) -> None:
    """Masking with the cheap pre-checks equals running every secret-shape regex on the text."""
    text = "".join(fragments)
    everything = text
    for pattern, _, _ in _PATTERNS:
        everything = pattern.sub(lambda m: m.group(1) + MASK, everything)
    assert Redactor().mask(text) == everything
