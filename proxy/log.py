"""Logging set-up; every record passes a filter that blanks credentials."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

# Authorization values, tokens in query strings, and userinfo in URLs.
_PATTERNS = (
    re.compile(
        r"(?i)((?:authorization|private-token|deploy-token|job-token)[\"']?\s*[:=]\s*[\"']?)"
        r"(basic|bearer)?\s*[^\s\"',}]+"
    ),
    re.compile(
        r"(?i)((?:private[-_]token|job[-_]token|token|password|signature|x-amz-signature|x-amz-credential)=)[^&\s\"']+"
    ),
    re.compile(r"(://[^/\s:@]+:)[^@/\s]+(@)"),
    # A bare credential, e.g. aiohttp quoting the start of an oversized Authorization header.
    re.compile(r"(?i)(\b(?:basic|bearer)\s+)[A-Za-z0-9+/=._~-]{16,}"),
)
REDACTED = "[REDACTED]"
ACCESS_LOGGER = "proxy.access"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Blank every known secret and every credential-shaped value in `text`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(lambda m: m.group(1) + REDACTED, text)
    text = _PATTERNS[1].sub(lambda m: m.group(1) + REDACTED, text)
    text = _PATTERNS[3].sub(lambda m: m.group(1) + REDACTED, text)
    return _PATTERNS[2].sub(lambda m: m.group(1) + REDACTED + m.group(2), text)


class RedactingFilter(logging.Filter):
    """Renders each record's message once, redacted, so no handler sees a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            record.access = {
                k: redact(v, self.secrets) if isinstance(v, str) else v for k, v in access.items()
            }
        if record.exc_info:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self.secrets
            )
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        return json.dumps(entry, ensure_ascii=False)


def redacted_target(path: str, query: str) -> str:
    """The request target with every query value blanked: a query is where tokens travel."""
    if not query:
        return path
    params = (p.partition("=") for p in query.split("&"))
    return path + "?" + "&".join(k + (f"={REDACTED}" if eq else "") for k, eq, _ in params)


# Key in a response's own mapping: body bytes sent by sendfile, which aiohttp's writer does
# not count (the body goes from the file to the socket in the kernel).
SENDFILE_BYTES = web.ResponseKey("sendfile_bytes", int)


class AccessLogger(AbstractAccessLogger):
    """One line per request; no header but User-Agent, no query value, ever reaches it."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        target = redacted_target(request.rel_url.raw_path, request.rel_url.raw_query_string)
        bytes_sent = response.body_length + response.get(SENDFILE_BYTES, 0)
        fields = {
            "remote": request.remote or "-",
            "method": request.method,
            "path": target,
            "status": response.status,
            # Headers included, as nginx's $bytes_sent: what really went out, even if cut.
            "bytes_sent": bytes_sent,
            "duration": round(time, 6),
            "cache": response.headers.get("X-Cache", "-"),
            "user_agent": request.headers.get("User-Agent", "-"),
        }
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs %s "%s"',
            fields["remote"],
            request.method,
            target,
            request.version.major,
            request.version.minor,
            response.status,
            bytes_sent,
            time,
            fields["cache"],
            fields["user_agent"],
            extra={"access": fields},
        )


def setup_logging(log_format: str, secrets: Iterable[str], level: int = logging.INFO) -> None:
    """Root logging to stderr in `log_format` ('plain' or 'json'), redacting `secrets`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
