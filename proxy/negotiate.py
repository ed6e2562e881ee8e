"""HTTP negotiation for simple pages: `Accept` with q-values (PEP 691), gzip, `If-None-Match`."""

from __future__ import annotations

import re
from dataclasses import dataclass

HTML_LEGACY = "text/html"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
# What the proxy asks of an upstream: JSON first (PEP 700's sizes and upload times come only in
# it), HTML from one without JSON (GitLab's registry routes answer HTML whatever is asked).
UPSTREAM_ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, {HTML_LEGACY};q=0.1"
# Server preference on equal quality, as PyPI's: text/html first, so `*/*` or no Accept at all
# (a browser, curl, an old tool) gets the page every client can read.
OFFERS = (HTML_LEGACY, HTML_V1, JSON_V1)
# PEP 691: `latest` names whatever version the server considers newest, which is v1 here.
_ALIASES = {
    "application/vnd.pypi.simple.latest+html": HTML_V1,
    "application/vnd.pypi.simple.latest+json": JSON_V1,
}
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE_RE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")
# RFC 9110 qvalue: 0 to 1 with at most three decimals.
_QVALUE_RE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header: `type/subtype` (either may be `*`) and its quality."""

    type: str
    subtype: str
    q: float

    def specificity(self, offer: str) -> int | None:
        """How exactly this range names `offer`: 2 exact, 1 `type/*`, 0 `*/*`, None no match."""
        offer_type, _, offer_subtype = offer.partition("/")
        if self.type == "*":
            return 0
        if self.type != offer_type:
            return None
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == offer_subtype else None


def parse_accept(header: str) -> list[MediaRange]:
    """The well-formed media ranges of an Accept header; malformed entries are skipped.

    Parameters other than `q` are ignored: no offer here has any, and a client writing
    `text/html; charset=utf-8` means HTML.
    """
    ranges = []
    for entry in header.split(","):
        kind, *params = (part.strip() for part in entry.split(";"))
        match = _RANGE_RE.match(kind)
        if match is None:
            continue
        type_, subtype = match[1].lower(), match[2].lower()
        if type_ == "*" and subtype != "*":
            continue
        q = _quality(params)
        if q is None:
            continue
        alias = _ALIASES.get(f"{type_}/{subtype}")
        if alias is not None:
            type_, _, subtype = alias.partition("/")
        ranges.append(MediaRange(type_, subtype, q))
    return ranges


def _quality(params: list[str]) -> float | None:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE_RE.match(value) else None
    return 1.0


def choose(accept: str | None, offers: tuple[str, ...] = OFFERS) -> str | None:
    """The offer the client prefers, or None when it accepts none of them (406).

    Each offer takes the quality of the most specific range naming it (RFC 9110 12.5.1);
    ties go to the more specific match, then to the order of `offers`. A missing, empty or
    wholly malformed header accepts anything.
    """
    ranges = parse_accept(accept) if accept else []
    if not ranges:
        return offers[0] if offers else None
    best: tuple[float, int, int] | None = None
    chosen = None
    for order, offer in enumerate(offers):
        matches = [(s, r.q) for r in ranges if (s := r.specificity(offer)) is not None]
        if not matches:
            continue
        specificity = max(s for s, _ in matches)
        q = max(q for s, q in matches if s == specificity)
        if q <= 0:
            continue
        rank = (q, specificity, -order)
        if best is None or rank > best:
            best, chosen = rank, offer
    return chosen


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether gzip may be used; without the header, only identity is safe."""
    if not accept_encoding:
        return False
    gzip_q: float | None = None
    star_q: float | None = None
    for entry in accept_encoding.split(","):
        coding, *params = (part.strip() for part in entry.split(";"))
        q = _quality(params)
        if q is None:
            continue
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def none_match(if_none_match: str | None, etag: str) -> bool:
    """True when `If-None-Match` names `etag` (weak comparison, RFC 9110 13.1.2) or is `*`."""
    if not if_none_match:
        return False
    wanted = _opaque(etag)
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or _opaque(tag) == wanted:
            return True
    return False


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag
