"""HTTP for images: the format from the Accept header, and If-None-Match against an ETag."""

from __future__ import annotations

from datalab.core.errors import Problem

from .spec import Format

MEDIA_TYPES: dict[Format, str] = {"png": "image/png", "svg": "image/svg+xml"}


def negotiate(accept: str | None) -> Format:
    """PNG or SVG from the Accept header: the format with the highest q (taken from the
    most specific range naming it) wins, PNG on a tie; no header means PNG. 406 when
    neither is acceptable."""
    scores: dict[Format, tuple[int, float]] = {}  # format -> (specificity, q)
    for part in (accept or "*/*").split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        for fmt, media_type in MEDIA_TYPES.items():
            specificity = {media_type: 2, "image/*": 1, "*/*": 0}.get(media, -1)
            if specificity > scores.get(fmt, (-1, 0.0))[0]:
                scores[fmt] = (specificity, q)
    choices = [(q, fmt == "png", fmt) for fmt, (_, q) in scores.items() if q > 0]
    if not choices:
        raise Problem(406, f"Cannot answer {accept!r}: ask for image/png or image/svg+xml.")
    return max(choices)[2]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2): W/ does not matter."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
