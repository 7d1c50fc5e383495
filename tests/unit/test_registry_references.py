"""References and names: the one parser every command and API call goes through."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import InvalidReference
from kiln.registry import Reference, parse_reference, validate_name
from kiln.registry.references import format_version_ranges

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits:3", Reference("digits", version=3)),
        ("digits@production", Reference("digits", alias="production")),
        ("digits", Reference("digits", alias="production")),
        ("mnist-cnn_v2.1@canary-7", Reference("mnist-cnn_v2.1", alias="canary-7")),
        ("  digits:12  ", Reference("digits", version=12)),
    ],
)
def test_accepted_forms(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("digits:", "positive integer"),
        ("digits:0", "positive integer"),
        ("digits:-1", "positive integer"),
        ("digits:x", "positive integer"),
        ("digits:٣", "positive integer"),  # a non-ASCII digit
        ("digits@", "no alias after '@'"),
        ("digits:3@production", "not both"),
        ("", "empty reference"),
        ("Digits", "did you mean 'digits'"),
        ("my model", "did you mean 'my-model'"),
        (":3", "empty model name"),
        ("-digits", "not a valid model name"),
        ("x" * 65, "65 characters"),
        ("digits@Prod", "not a valid alias name"),
        ("digits@two words", "did you mean 'two-words'"),
    ],
)
def test_malformed_references_say_what_is_accepted(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as err:
        parse_reference(text)
    assert fragment in str(err.value)


def test_default_alias_can_be_chosen() -> None:
    assert parse_reference("digits", default_alias="candidate").alias == "candidate"


@given(name=names, version=st.integers(min_value=1, max_value=10**9))
def test_version_references_round_trip(name: str, version: int) -> None:
    ref = Reference(name, version=version)
    assert parse_reference(str(ref)) == ref


@given(name=names, alias=names)
def test_alias_references_round_trip(name: str, alias: str) -> None:
    ref = Reference(name, alias=alias)
    assert parse_reference(str(ref)) == ref


@given(st.text(alphabet=string.printable + "äé٣", max_size=80))
def test_parser_accepts_or_raises_invalid_reference_only(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference as err:
        message = str(err)
    else:
        message = ""
        assert validate_name(ref.name) == ref.name
    assert message or ref


def test_version_ranges() -> None:
    assert format_version_ranges([]) == ""
    assert format_version_ranges([5]) == "5"
    assert format_version_ranges([3, 1, 2, 5, 7, 8, 9]) == "1-3, 5, 7-9"
