"""What the owner reads: agent-supplied text with every invisible or misleading character made visible.

An agent controls the strings the owner approves. Characters that change how text *looks*
without being seen (bidirectional overrides and isolates, zero-width and other format
characters, terminal escape sequences, look-alike spaces, invisible fillers) let it show
`echo cleaning build cache # ; rm -rf /workspace/project` where the call really runs the `rm`.
Every surface the owner reads (dashboard pages, CLI, `watch`, notifications) passes the text
through this module, which replaces each such character with a visible escape (`\\u2067`) and
says whether it did, so the approval can carry a warning.

Rules (one place, so every surface agrees):
- Escaped and flagged: Unicode categories Cc (controls, incl. ESC: an ANSI sequence loses its
  ESC and prints as inert text), Cf (format: bidi U+202A-202E, U+2066-2069, U+200E/200F,
  U+061C, zero-width U+200B-200D, U+2060, U+FEFF, soft hyphen, tags U+E0000-E007F, ...), Cs
  (lone surrogates), Co (private use), Cn (unassigned), Zl/Zp (line/paragraph separators), every
  space but U+0020, the invisible default-ignorable letters and marks (Hangul fillers, variation
  selectors, ...) except a variation selector after a symbol or ideograph and a zero-width
  joiner between emoji (they only pick the glyph), combining marks placed on an ASCII character
  that do not compose with it (overlays such as U+0338 on `/`), and runs of more than four marks.
- Escaped, not flagged: `\\t`, `\\r`, and `\\n` unless the text is shown as several lines. These
  are ordinary in file contents; shown escaped they cannot forge a line or overwrite one.
- Look-alikes (flagged `confusable`, characters escaped): a word that mixes Latin with a script
  whose letters look Latin (Cyrillic, Greek, Armenian, Cherokee, ...), and letters or digits
  that normalise (NFKC) to a different ASCII one (fullwidth `ｒｍ`, mathematical `𝐫𝐦`). A whole
  word in one look-alike script (Cyrillic `аре`) is not detected: it stays readable as what it is.

Two encodings, both unambiguous:
- `show_text`: plain text; a backslash is doubled, so `unshow_text` recovers the exact original
  and an agent cannot type a fake escape. (`reversible=False` leaves backslashes alone, for
  lines whose free text is already JSON-encoded.)
- `show_json`: JSON text (`json.loads` gives the original value back); the escapes are JSON's own
  `\\uXXXX`, astral characters as surrogate pairs.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_FLAGGED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
# Default-ignorable (invisible) code points outside the categories above.
_INVISIBLE_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2800, 0x2800),
                     (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0x1D173, 0x1D17A),
                     (0xE0000, 0xE0FFF))
# Scripts with letters that pass for Latin ones.
_LOOKALIKE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC", "LISU",
                                "GEORGIAN", "OLD", "GOTHIC", "RUNIC", "OGHAM", "DESERET", "VAI", "TIFINAGH"})
_VARIATION_SELECTORS = frozenset(map(chr, [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]))
_MAX_MARKS = 4
_MARKS = frozenset({"Mn", "Me", "Mc"})
_PLAIN_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
_ORDINARY = frozenset("\n\t\r")   # escaped but not worth a warning
_ESCAPE_TOKEN = re.compile(r"\\\\|\\u[0-9a-f]{4}|\\U[0-9a-f]{8}")


@dataclass(frozen=True)
class Shown:
    """Text ready for the owner's eyes."""

    text: str
    escaped: bool = False      # an invisible, format, control or misleading character was escaped
    confusable: bool = False   # a look-alike (mixed-script word, fullwidth/math letter) was escaped

    @property
    def suspicious(self) -> bool:
        """Whether the owner should be warned that what they read was not what was sent."""
        return self.escaped or self.confusable


def _invisible(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _INVISIBLE_RANGES)


def _script(ch: str) -> str | None:
    """The script of a letter, from its Unicode name (`CYRILLIC SMALL LETTER A` -> CYRILLIC)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    if ch.isascii():
        return "LATIN"
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else None


def _ascii_lookalike(ch: str) -> bool:
    """A non-ASCII letter or digit that normalises to an ASCII one (fullwidth, mathematical)."""
    if ch.isascii() or unicodedata.category(ch) not in ("Lu", "Ll", "Lt", "Lo", "Lm", "Nd"):
        return False
    n = unicodedata.normalize("NFKC", ch)
    return n.isascii() and n.isalnum()


def _word_spans(text: str) -> Iterator[tuple[int, int]]:
    start = None
    for i, ch in enumerate(text):
        wordy = unicodedata.category(ch)[0] in "LMN"
        if wordy and start is None:
            start = i
        elif not wordy and start is not None:
            yield start, i
            start = None
    if start is not None:
        yield start, len(text)


def _confusable_positions(text: str) -> set[int]:
    """Indexes of characters to escape because they make a word look like another one."""
    out: set[int] = set()
    for lo, hi in _word_spans(text):
        word = text[lo:hi]
        scripts = {s for s in map(_script, word) if s is not None}
        mixed = "LATIN" in scripts and len(scripts & _LOOKALIKE_SCRIPTS) >= 2
        for i in range(lo, hi):
            if (mixed and not text[i].isascii()) or _ascii_lookalike(text[i]):
                out.add(i)
    return out


def _emoji_joiner(text: str, i: int) -> bool:
    """A variation selector after a symbol or ideograph (❤️), or a zero-width joiner between two
    symbols (👨‍👩‍👧): they only choose how the emoji is drawn."""
    ch = text[i]
    if i == 0:
        return False
    before = text[i - 1]
    if ch in _VARIATION_SELECTORS:
        return not before.isascii() and unicodedata.category(before) in ("So", "Lo", "Sm")
    if ch == "\u200d" and i + 1 < len(text):
        joins = unicodedata.category(before) in ("So", "Sk") or before in _VARIATION_SELECTORS
        return joins and unicodedata.category(text[i + 1]) == "So"
    return False


def _misleading_mark(text: str, i: int, marks_before: int) -> bool:
    """A combining mark that hides or overlays rather than spells: on ASCII without composing, or
    the fifth mark in a row."""
    if marks_before >= _MAX_MARKS:
        return True
    if i == 0:
        return True
    base = text[i - 1]
    if marks_before == 0 and base.isascii():
        return len(unicodedata.normalize("NFC", base + text[i])) != 1
    return False


def _verdict(text: str, i: int, marks_before: int, confusable: set[int], multiline: bool) -> str:
    ch = text[i]
    cat = unicodedata.category(ch)
    if ch == "\n" and multiline:
        return "keep"
    if ch in _ORDINARY:
        return "ordinary"
    if _emoji_joiner(text, i):
        return "keep"
    invisible = ch != " " and (cat in _FLAGGED_CATEGORIES or _invisible(ord(ch)))
    if invisible or (cat in _MARKS and _misleading_mark(text, i, marks_before)):
        return "flag"
    return "confusable" if i in confusable else "keep"


def _classify(text: str, multiline: bool) -> Iterator[tuple[str, str]]:
    """Each character with its verdict: 'keep', 'ordinary' (escape quietly), 'flag', 'confusable'."""
    confusable = _confusable_positions(text)
    marks = 0
    for i, ch in enumerate(text):
        yield ch, _verdict(text, i, marks, confusable, multiline)
        marks = marks + 1 if unicodedata.category(ch) in _MARKS else 0


def _u(cp: int) -> str:
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def _json_u(cp: int) -> str:
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    v = cp - 0x10000
    return f"\\u{0xD800 + (v >> 10):04x}\\u{0xDC00 + (v & 0x3FF):04x}"


def show_text(text: str, *, multiline: bool = False, reversible: bool = True) -> Shown:
    """Plain text with every invisible or misleading character escaped (see the module doc)."""
    out: list[str] = []
    escaped = confusable = False
    for ch, verdict in _classify(text, multiline):
        if verdict == "keep":
            out.append(_PLAIN_NAMED["\\"] if ch == "\\" and reversible else ch)
            continue
        out.append(_PLAIN_NAMED.get(ch) or _u(ord(ch)))
        escaped |= verdict == "flag"
        confusable |= verdict == "confusable"
    return Shown("".join(out), escaped, confusable)


def show_json(value: Any, *, indent: int | None = None) -> Shown:
    """`value` as JSON (keys sorted) with the same characters escaped inside its strings.

    Controls JSON escapes itself (`\\u001b`) are flagged too: the check runs on the strings of
    `value`, not only on the encoded text.
    """
    raw = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=True, default=str)
    out: list[str] = []
    for ch, verdict in _classify(raw, multiline=True):
        out.append(ch if verdict in ("keep", "ordinary") else _json_u(ord(ch)))
    flags = _scan(value)
    return Shown("".join(out), flags.escaped, flags.confusable)


def _scan(value: Any) -> Shown:
    """Whether any string inside `value` (keys included) needs a warning."""
    stack = [value]
    escaped = confusable = False
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            s = show_text(v)
            escaped |= s.escaped
            confusable |= s.confusable
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return Shown("", escaped, confusable)


def unshow_text(shown: str) -> str:
    """The exact original of `show_text(original).text` (reversible mode)."""
    out: list[str] = []
    i = 0
    while i < len(shown):
        ch = shown[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = shown[i + 1]
        if nxt in "\\ntr":
            out.append({"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}[nxt])
            i += 2
        else:
            width = 4 if nxt == "u" else 8
            out.append(chr(int(shown[i + 2:i + 2 + width], 16)))
            i += 2 + width
    return "".join(out)


def escape_parts(shown: str) -> Iterator[tuple[str, bool]]:
    """Split shown text into (piece, is_escape) so a page can highlight the escapes.

    Works for both encodings: an escaped backslash (`\\\\`) is consumed first, so an agent's
    literal `\\u2067` is never mistaken for an escape.
    """
    pos = 0
    for m in _ESCAPE_TOKEN.finditer(shown):
        tok = m.group()
        if tok == "\\\\":
            continue
        if m.start() > pos:
            yield shown[pos:m.start()], False
        yield tok, True
        pos = m.end()
    if pos < len(shown):
        yield shown[pos:], False


WARNING = ("These arguments contain invisible, direction-changing or look-alike characters, shown "
           "escaped (like \\u2067). What you read may not be what runs: read the escaped text.")
