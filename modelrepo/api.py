"""The HTTP API's limits: the rules the gateway enforces on names, labels, versions and top_k,
and the same rules as OpenAPI patterns and bounds (gateway/openapi.py is built from these;
tests/gateway/test_openapi_rules.py fails when the document and the server disagree).

Standard library only, like the rest of modelrepo.
"""

from __future__ import annotations

from modelrepo import (
    LABEL_PATTERN,
    LABEL_RULE,
    MAX_VERSION,
    MODEL_NAME_PATTERN,
    MODEL_NAME_RULE,
    is_label,
    is_model_name,
)

__all__ = [
    "LABEL_RULE",
    "MAX_TOP_K",
    "MAX_VERSION",
    "MODEL_NAME_RULE",
    "SELECTOR_FIELDS",
    "is_label",
    "is_model_name",
    "label_pattern",
    "model_name_pattern",
    "number_pattern",
    "parse_number",
    "version_or_label_pattern",
]

MAX_TOP_K = 100
"""The most classes one answer ranks (top_k is 1 to this)."""
SELECTOR_FIELDS = ("version", "label", "top_k")
"""The options that pick what answers: in the query string, or in a body beside the image."""


def parse_number(text: str, upper: int) -> int | None:
    """A version or top_k as the API reads it: ASCII decimal digits (leading zeros allowed),
    from 1 to `upper`; None for anything else ("", "+1", " 1", "1.0", "0")."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 0 < value <= upper else None


def _anchored(body: str) -> str:
    """A pattern the document's readers (ECMA-262, Python's re.search) match whole, as the
    server's fullmatch does. `$` would also match before a final newline in Python: the
    lookahead `(?![\\s\\S])` says "end of text" in both dialects."""
    return f"^(?:{body})(?![\\s\\S])"


def model_name_pattern() -> str:
    """MODEL_NAME_PATTERN as an OpenAPI `pattern`."""
    return _anchored(MODEL_NAME_PATTERN.pattern)


def label_pattern() -> str:
    """LABEL_PATTERN as an OpenAPI `pattern`."""
    return _anchored(LABEL_PATTERN.pattern)


def _up_to(bound: str) -> list[str]:
    """Regex alternatives for the decimal numbers of len(bound) digits that are <= bound (no
    leading zero): bound's first i digits, then a smaller digit, then any digits; or bound."""
    alternatives = []
    for i, digit in enumerate(bound):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            top = int(digit) - 1
            smaller = f"[{low}-{top}]" if top > low else str(low)
            rest = len(bound) - i - 1
            alternatives.append(bound[:i] + smaller + (f"[0-9]{{{rest}}}" if rest else ""))
    return [*alternatives, bound]


def number_pattern(upper: int) -> str:
    """The decimal numbers `parse_number(text, upper)` accepts, as an OpenAPI `pattern` (for
    a version in a path, where the document can only speak of text)."""
    return _anchored(_number_body(upper))


def _number_body(upper: int) -> str:
    digits = str(upper)
    shorter = f"[1-9][0-9]{{0,{len(digits) - 2}}}" if len(digits) > 1 else ""
    alternatives = [a for a in (shorter, *_up_to(digits)) if a]
    return "0*(?:" + "|".join(alternatives) + ")"


def version_or_label_pattern() -> str:
    """A version number (1 to MAX_VERSION) or a label in its place (the /v2 URL segment)."""
    return _anchored(f"{_number_body(MAX_VERSION)}|{LABEL_PATTERN.pattern}")
