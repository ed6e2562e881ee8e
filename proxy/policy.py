"""The `[policy]` rules: minimum ages, exemptions, protected names, yanks; a verdict per file."""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from packaging.version import InvalidVersion, Version

from .simple import (
    Distribution,
    is_distribution_filename,
    is_valid_name,
    normalize,
    version_of,
)

if TYPE_CHECKING:
    from .config import PolicySettings

Rule = Literal["min_age", "min_age_internal", "unknown_age", "protected"]
# Characters of a normalized name, and fnmatch's own.
_PATTERN_RE = re.compile(r"^[a-z0-9*?\[\]!-]+$")
_SEPARATORS_RE = re.compile(r"[-_.]+")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether clients may see and download a file, and if not, which rule says so."""

    visible: bool
    rule: Rule | None = None
    # When a file hidden for its age becomes visible (epoch seconds); None if waiting won't do.
    available_at: float | None = None


SHOWN = Verdict(True)


# A page asks of each of its files by the page's name: normalized once, not per file.
_normalized = functools.lru_cache(maxsize=1024)(normalize)


def parse_exempt(text: str) -> tuple[str, Version | None]:
    """'name' or 'name==version' → (normalized name, version or None); ValueError if neither."""
    name, sep, version = (part.strip() for part in text.partition("=="))
    if not is_valid_name(name):
        raise ValueError(f"{text!r} is not a package name or 'name==version'")
    if not sep:
        return normalize(name), None
    try:
        return normalize(name), Version(version)
    except InvalidVersion:
        raise ValueError(f"{text!r}: {version!r} is not a version") from None


def parse_pattern(text: str) -> str:
    """A protected-name pattern, normalized as names are ('Acme_*' → 'acme-*')."""
    pattern = _SEPARATORS_RE.sub("-", text.strip().lower())
    if not _PATTERN_RE.match(pattern):
        raise ValueError(f"{text!r} is not a name pattern (letters, digits, - _ . and * ? [ ])")
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                raise ValueError(f"{text!r}: '[' inside '[...]'")
            depth = 1
        elif char == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"{text!r}: '[' without its ']'")
    return pattern


def parse_yank(text: str) -> tuple[str | tuple[str, Version], bool | str]:
    """'name==version: reason' or 'filename: reason' → (what it yanks, the reason or True)."""
    target, _, reason = (part.strip() for part in text.partition(":"))
    what: str | tuple[str, Version]
    if "==" in target:
        name, version = parse_exempt(target)
        assert version is not None
        what = (name, version)
    elif is_distribution_filename(target):
        what = target
    else:
        raise ValueError(f"{text!r} is not 'name==version: reason' nor 'filename: reason'")
    return what, reason or True


def parse_upload_time(text: str | None) -> float | None:
    """Epoch seconds of a PEP 700 upload time (ISO 8601, UTC when no offset), or None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(moment: float) -> str:
    """An epoch moment as ISO 8601 UTC text, to the second: '2026-12-09T10:00:00Z'."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: float) -> str:
    """Seconds in the largest whole unit of days, hours, minutes: 604800 → '7d'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Policy:
    """The parsed rules; settings were validated by config.py, so parsing here cannot fail."""

    def __init__(self, settings: PolicySettings) -> None:
        self.min_age = settings.min_age
        self.min_age_internal = settings.min_age_internal
        self.unknown_age = settings.unknown_age
        exempt = [parse_exempt(entry) for entry in settings.exempt]
        self._exempt_names = {name for name, version in exempt if version is None}
        self._exempt_releases = {(name, v) for name, v in exempt if v is not None}
        patterns = [parse_pattern(entry) for entry in settings.protected]
        self._protected = (
            re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None
        )
        self._yanked_releases: dict[tuple[str, Version], bool | str] = {}
        self._yanked_files: dict[str, bool | str] = {}
        for entry in settings.yanked:
            what, reason = parse_yank(entry)
            if isinstance(what, str):
                self._yanked_files[what] = reason
            else:
                self._yanked_releases[what] = reason
        # Only pages of these names parse their filenames' versions for yanks.
        self._yanked_names = {name for name, _ in self._yanked_releases}

    @property
    def ages_files(self) -> bool:
        """Whether any minimum age is set: only then do upload times matter."""
        return self.min_age > 0 or self.min_age_internal > 0

    @property
    def yanks(self) -> bool:
        return bool(self._yanked_files or self._yanked_releases)

    @property
    def protects(self) -> bool:
        return self._protected is not None

    def is_protected(self, name: str) -> bool:
        """Whether `name` may never be taken from the public index."""
        return self._protected is not None and self._protected.match(normalize(name)) is not None

    def may_hide(self, name: str, filename: str) -> bool:
        """Whether the age rules may hide this file: only then is its page worth looking up."""
        return self.ages_files and not self._exempt(name, filename)

    def verdict(self, name: str, dist: Distribution, now: float) -> Verdict:
        """What the age rules say of `dist`, a file of project `name`, at `now`."""
        minimum = self.min_age if dist.public else self.min_age_internal
        if minimum <= 0 or self._exempt(name, dist.filename):
            return SHOWN
        uploaded = parse_upload_time(dist.upload_time)
        if uploaded is None:
            return SHOWN if self.unknown_age == "allow" else Verdict(False, "unknown_age")
        available_at = uploaded + minimum
        if now >= available_at:
            return SHOWN
        return Verdict(False, "min_age" if dist.public else "min_age_internal", available_at)

    def yanked(self, name: str, dist: Distribution) -> bool | str:
        """The file's PEP 592 yank: a local one (with its reason) first, else upstream's."""
        local = self._yanked_files.get(dist.filename)
        if local is None and _normalized(name) in self._yanked_names:
            version = version_of(dist.filename)
            if version is not None:
                local = self._yanked_releases.get((_normalized(name), version))
        return dist.yanked if local is None else local

    def message(self, filename: str, verdict: Verdict) -> str:
        """Why a file is refused, in one line (it is also the 403's reason phrase)."""
        if verdict.rule == "protected":
            return (
                f"{filename} is from the public index, and its name is protected (policy.protected)"
            )
        if verdict.rule == "unknown_age":
            return (
                f"{filename} has no known upload time, and policy.unknown_age = 'deny' "
                "refuses such files under a minimum age"
            )
        assert verdict.rule is not None and verdict.available_at is not None
        minimum = self.min_age if verdict.rule == "min_age" else self.min_age_internal
        return (
            f"{filename} is younger than policy.{verdict.rule} ({duration_text(minimum)}): "
            f"available from {iso(verdict.available_at)}"
        )

    def _exempt(self, name: str, filename: str) -> bool:
        normalized = _normalized(name)
        if normalized in self._exempt_names:
            return True
        if not self._exempt_releases:
            return False
        version = version_of(filename)
        return version is not None and (normalized, version) in self._exempt_releases
