"""Unknown names, told with the nearest known one (issue 18: a typo must not pass silently)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to `name`, if any is close enough to be the one meant."""
    got = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return got[0] if got else None


def unknown(what: str, name: str, known: Iterable[str], listing: str | None = None) -> str:
    """`unknown agent 'bobb' (did you mean 'bob'?)`, else where the known names are listed."""
    known = list(known)
    near = nearest(name, known)
    if near is not None:
        return f"unknown {what} {name!r} (did you mean {near!r}?)"
    if listing:
        return f"unknown {what} {name!r} (see: {listing})"
    return f"unknown {what} {name!r}" + (f" (known: {', '.join(sorted(known)[:12])})" if known else "")


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 error`, `2 errors`."""
    return f"{n} {word if n == 1 else many or word + 's'}"
