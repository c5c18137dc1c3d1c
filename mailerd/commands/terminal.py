"""Text from outside (a provider's bounce reason, a campaign name a product's user chose) on an
operator's terminal: control characters shown escaped, never obeyed. A reason of
``"\x1b]0;pwned\x07\x1b[2J...\nsent 0"`` set the window title, cleared the screen and forged a
table row."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with each control character written as its escape (``\\x1b``, ``\\n``)."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)
