"""stockade.core.display: what the owner reads has no invisible or misleading character left, the
escaping is reversible, and the issue-14 example is caught (property tests on the pure function)."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.display import escape_parts, show_json, show_text, unshow_text

SPOOF = "echo \u2067\u2066; rm -rf /workspace/project \u2069 # \u2066cleaning build cache\u2069\u2069"
BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\U000e0041", "\u3164", "\ufe0f",
             "\u115f", "\u2028", "\u2029", "\u00a0", "\u3000", "\x1b", "\x7f", "\x9b", "\x00", "\ud800",
             "\ue000"]
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

# Text biased towards the characters that matter, plus anything else Unicode has.
hostile_text = st.text(alphabet=st.sampled_from(BIDI + INVISIBLE + list("ab\\u20 /\n\t\r\"é")) | st.characters(),
                       max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=10)


def _visible(s: str, allow_newline: bool) -> None:
    for ch in s:
        if ch == "\n" and allow_newline:
            continue
        assert unicodedata.category(ch) not in FORBIDDEN_CATEGORIES, repr(ch)
        assert ch == " " or unicodedata.category(ch) != "Zs", repr(ch)


def test_the_issue_example_is_escaped_and_flagged() -> None:
    s = show_text(SPOOF)
    assert s.escaped and s.suspicious
    assert s.text == ("echo \\u2067\\u2066; rm -rf /workspace/project \\u2069 # \\u2066cleaning build cache"
                      "\\u2069\\u2069")
    j = show_json({"argv": ["sh", "-c", SPOOF]})
    assert j.escaped and "\\u2067" in j.text and not any(c in j.text for c in BIDI)


def test_every_bidi_and_invisible_character_is_escaped_and_flagged() -> None:
    for ch in BIDI + INVISIBLE:
        s = show_text(f"a{ch}b")
        assert s.escaped, repr(ch)
        assert ch not in s.text and s.text.startswith("a\\") and s.text.endswith("b"), (ch, s.text)


def test_ordinary_text_is_untouched_and_not_flagged() -> None:
    for t in ("ls -la /workspace", "café crème", "Москва", "東京タワー", "naïve résumé", "emoji 👍🏽 ok ❤️",
              "हिन्दी", "tab\tsep", "m²"):
        s = show_text(t)
        assert not s.suspicious, t
    assert show_text("café crème").text == "café crème"
    assert show_text("a\nb", multiline=True).text == "a\nb"
    assert show_text("a\nb").text == "a\\nb"       # one line stays one line


def test_lookalikes_are_escaped_and_flagged() -> None:
    for t in ("pаypal.com", "/wоrkspace", "ｒｍ -rf", "𝐫𝐦 -rf", "αpple"):   # Cyrillic а/о, fullwidth, math, Greek
        s = show_text(t)
        assert s.confusable and s.text.isascii(), (t, s.text)


def test_overlaid_combining_marks_are_escaped() -> None:
    assert show_text("/\u0338etc").escaped            # a long solidus overlay hides the slash
    assert not show_text("e\u0301").escaped           # composes to é: ordinary (decomposed) text
    assert show_text("a" + "\u0301" * 9).escaped      # zalgo stack


def test_terminal_escape_sequences_are_inert() -> None:
    s = show_text("\x1b[2J\x1b]0;pwned\x07done")
    assert "\x1b" not in s.text and "\x07" not in s.text and s.escaped
    assert s.text == "\\u001b[2J\\u001b]0;pwned\\u0007done"


def test_an_agents_literal_escape_text_is_not_an_escape() -> None:
    fake = show_text("\\u2067")                       # typed by the agent, six ASCII characters
    real = show_text("\u2067")
    assert fake.text != real.text and not fake.suspicious
    assert [p for p, is_esc in escape_parts(fake.text) if is_esc] == []
    assert [p for p, is_esc in escape_parts(real.text) if is_esc] == ["\\u2067"]
    jfake = show_json({"a": "\\u2067"})
    assert [p for p, is_esc in escape_parts(jfake.text) if is_esc] == []


@settings(max_examples=400)
@given(hostile_text, st.booleans())
def test_shown_text_has_no_invisible_character_and_is_reversible(t: str, multiline: bool) -> None:
    s = show_text(t, multiline=multiline)
    _visible(s.text, allow_newline=multiline)
    assert unshow_text(s.text) == t
    if any(c in t for c in BIDI + INVISIBLE if c != "\ufe0f"):   # (a selector after an emoji is fine)
        assert s.escaped


@settings(max_examples=300)
@given(json_values, st.sampled_from([None, 2]))
def test_shown_json_is_the_same_value_and_visible(v: Any, indent: int | None) -> None:
    s = show_json(v, indent=indent)
    _visible(s.text, allow_newline=True)
    assert json.loads(s.text) == v
    if any(c in json.dumps(v, ensure_ascii=False) for c in BIDI):
        assert s.escaped


@settings(max_examples=200)
@given(hostile_text, hostile_text)
def test_different_texts_look_different(a: str, b: str) -> None:
    if a != b:
        assert show_text(a).text != show_text(b).text
