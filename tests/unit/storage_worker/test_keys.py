"""Keys in a tenant's space: hostile ones refused with the rule named, ordinary ones kept
(in NFC), listing prefixes accepted where a listing needs them."""

from __future__ import annotations

import unicodedata

import pytest

from storage_worker.keys import MAX_KEY_BYTES, KeyRefused, normalise_key

HOSTILE = [
    ("../x", ". or .. segment"),
    ("a/../b", ". or .. segment"),
    ("a/..", ". or .. segment"),
    ("./a", ". or .. segment"),
    ("a/./b", ". or .. segment"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("a\\b", "backslash"),
    ("..\\..\\windows", "backslash"),
    ("a%2Fb", "percent-encoded"),
    ("a%2fb", "percent-encoded"),
    ("%2e%2e/secret", "percent-encoded"),
    ("%2E%2E%2Fsecret", "percent-encoded"),
    ("a%25b", "percent-encoded"),
    ("a%5Cb", "percent-encoded"),
    ("a\x00b", "control"),
    ("a\x00", "control"),
    ("line\nbreak", "control"),
    ("a\x1fb", "control"),
    ("a\x7fb", "control"),
    ("a\u200bb", "control"),  # zero-width space (a format character)
    ("a\u202eb", "control"),  # right-to-left override
    ("a\ufeffb", "control"),  # byte-order mark
    ("a\uff0fb", "stands for a separator"),  # fullwidth solidus
    ("a\uff3cb", "stands for a separator"),  # fullwidth reverse solidus
    ("a\u2215b", "stands for a separator"),  # division slash
    ("a\u2044b", "stands for a separator"),  # fraction slash
    ("a\u29f8b", "stands for a separator"),  # big solidus
    ("\u2024\u2024/x", "stands for a separator"),  # one-dot leader
    ("\u2025/x", "stands for a separator"),  # two-dot leader
    ("a\uff0eb", "stands for a separator"),  # fullwidth full stop
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("", "empty"),
    ("x" * (MAX_KEY_BYTES + 1), f"longer than {MAX_KEY_BYTES} bytes"),
    ("é" * 513, f"longer than {MAX_KEY_BYTES} bytes"),  # 513 characters, 1026 bytes
]


@pytest.mark.parametrize(("key", "rule"), HOSTILE, ids=[repr(key[:24]) for key, _ in HOSTILE])
def test_a_hostile_key_is_refused_with_its_rule(key: str, rule: str) -> None:
    with pytest.raises(KeyRefused, match=rule) as refused:
        normalise_key(key)

    assert len(str(refused.value)) < 200, "the message echoes the whole key"


@pytest.mark.parametrize(
    "key",
    [
        "reports/2026/q3.pdf",
        "a b/c-d_e.f",
        "日本語/ファイル.txt",
        "photos/🎉 party.png",
        "dots.in..a.name",
        "...",
        "100%/done",  # a % that encodes nothing
        "%41BC",  # %41 is `A`, not a separator
        "x" * MAX_KEY_BYTES,
    ],
)
def test_an_ordinary_key_is_kept_as_it_is(key: str) -> None:
    assert normalise_key(key) == key


def test_a_key_comes_back_in_nfc() -> None:
    decomposed = "cafe\u0301/re\u0301sume\u0301.txt"

    normalised = normalise_key(decomposed)

    assert normalised == "café/résumé.txt"
    assert unicodedata.is_normalized("NFC", normalised)


def test_the_length_is_measured_after_nfc() -> None:
    decomposed = "e\u0301" * 400  # 1200 bytes decomposed, 800 in NFC

    assert normalise_key(decomposed) == "é" * 400


def test_compatibility_characters_other_than_separators_are_kept() -> None:
    # NFKC turns `ﬁ` into `fi` and `①` into `1`: neither stands for a separator.
    assert normalise_key("ﬁle①.txt") == "ﬁle①.txt"


def test_a_listing_prefix_may_be_empty_or_a_folder() -> None:
    assert normalise_key("", allow_empty=True) == ""
    assert normalise_key("docs/", folder=True) == "docs/"
    assert normalise_key("docs/sub", folder=True) == "docs/sub"
    assert normalise_key("docs/su", allow_empty=True, folder=True) == "docs/su"


@pytest.mark.parametrize(
    ("prefix", "rule"),
    [
        ("docs//", "empty segment"),
        ("/", "absolute"),
        ("../", ". or .. segment"),
        ("docs/../", ". or .. segment"),
        ("docs%2F", "percent-encoded"),
    ],
)
def test_a_hostile_listing_prefix_is_refused(prefix: str, rule: str) -> None:
    with pytest.raises(KeyRefused, match=rule):
        normalise_key(prefix, allow_empty=True, folder=True)


def test_without_the_flags_a_prefix_is_not_a_key() -> None:
    with pytest.raises(KeyRefused, match="empty"):
        normalise_key("")
    with pytest.raises(KeyRefused, match="empty segment"):
        normalise_key("docs/")
