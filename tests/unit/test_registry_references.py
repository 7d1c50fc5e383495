"""References and names: the one parser every command and API call goes through."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import InvalidReference
from kiln.registry import Reference, parse_reference, validate_name
from kiln.registry.references import format_version_ranges, parse_version

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


@pytest.mark.parametrize(
    "text",
    [
        "digits:9223372036854775808",  # 2**63: past what a database integer holds
        "digits:99999999999999999999",
        "digits:" + "9" * 5000,  # past Python's 4,300-digit int() limit
    ],
)
def test_versions_past_int64_are_invalid_references(text: str) -> None:
    with pytest.raises(InvalidReference) as err:
        parse_reference(text)
    message = str(err.value)
    assert "out of range" in message and "9223372036854775807" in message
    assert len(message) < 400  # the 5,000 digits are not echoed


def test_the_largest_version_and_leading_zeros_are_accepted() -> None:
    assert parse_reference("digits:9223372036854775807").version == 2**63 - 1
    assert parse_reference("digits:" + "0" * 5000 + "7").version == 7


@pytest.mark.parametrize("version", [0, -1, 2**63, pytest.param(2**70000, id="70000-bits"), True])
def test_a_reference_holds_only_possible_versions(version: int) -> None:
    with pytest.raises(InvalidReference, match="version"):
        Reference("digits", version=version)


def test_parse_version_for_transports() -> None:
    assert parse_version("3") == 3
    for text in ("", "x", "-3", "0", "1" * 20, "9" * 5000, "٣"):
        with pytest.raises(InvalidReference):
            parse_version(text)


def test_echoed_names_are_quoted() -> None:
    with pytest.raises(InvalidReference) as err:
        parse_reference("a\u202eb\x00c@production")
    assert "\u202e" not in str(err.value) and "\x00" not in str(err.value)
    with pytest.raises(InvalidReference) as err:
        parse_reference("x" * 10_000)
    assert len(str(err.value)) < 400
