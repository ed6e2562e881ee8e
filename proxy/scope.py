"""Where a request points: a GitLab project or group, by id as the client sent it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from .errors import BadRequest

ScopeKind = Literal["projects", "groups"]
# A numeric id, or a URL-encoded full path; encoded slashes stay encoded (%2F).
_RAW_ID_RE = re.compile(r"^[A-Za-z0-9._~%-]{1,512}$")


@dataclass(frozen=True, slots=True)
class Scope:
    """A project or group, with its id exactly as received (numeric or URL-encoded path)."""

    kind: ScopeKind
    raw_id: str

    @property
    def api_path(self) -> str:
        """The absolute path of this scope's PyPI API: GitLab's, which the proxy serves too."""
        if self.kind == "projects":
            return f"/api/v4/projects/{self.raw_id}/packages/pypi"
        return f"/api/v4/groups/{self.raw_id}/-/packages/pypi"

    @property
    def packages_path(self) -> str:
        """The absolute path of this scope's REST Packages API list (one row per version)."""
        return f"/api/v4/{self.kind}/{self.raw_id}/packages"

    @property
    def key(self) -> str:
        """A stable cache key part; `%2f` and `%2F` name the same path."""
        return f"{self.kind}/{self.raw_id.replace('%2f', '%2F')}"

    @classmethod
    def parse(cls, kind: str, raw_id: str) -> Scope:
        if kind not in ("projects", "groups"):
            raise BadRequest(f"unknown scope kind {kind!r}")
        if not _RAW_ID_RE.match(raw_id):
            raise BadRequest("malformed project or group id")
        # A full path names real namespaces: `..` or `.` segments would only dodge
        # `access.allow`'s prefix match (groups/a%2F..%2Fb is not under groups/a).
        if any(part in ("", ".", "..") for part in unquote(raw_id).split("/")):
            raise BadRequest("malformed project or group id: empty, '.' or '..' path segment")
        return cls(kind, raw_id)  # type: ignore[arg-type]

    @classmethod
    def of_route(cls, raw_path: str) -> Scope:
        """The scope of a routed `/api/v4/{projects|groups}/{id}/...` path, the id as encoded.

        By position, not by spelling: the router decodes `/%61pi/v4/...` to `/api/v4/...`, so
        whoever judges the scope must read the same segments the handlers do.
        """
        segments = raw_path.split("/")
        return cls.parse(segments[3], segments[4])

    @classmethod
    def from_text(cls, text: str) -> Scope:
        """A command-line scope: 'projects/42', 'groups/my-group' or 'groups/a/b' (a subgroup)."""
        kind, _, rest = text.partition("/")
        if not rest:
            raise BadRequest(f"{text!r} is not 'projects/ID' or 'groups/ID'")
        return cls.parse(kind, rest.replace("/", "%2F"))
