"""Logging set-up; every record but the access log's passes a filter that blanks credentials."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from importlib.metadata import version

from .config import Settings

# Credentials where they occur: Authorization and token header values, token-like query
# values, and userinfo in URLs. Never a substring of ordinary text.
_PATTERNS = (
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:basic|bearer)\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)((?:private|job|deploy)[-_]token[\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]+"),
    re.compile(
        r"(?i)((?:private_token|job_token|token|password|signature"
        r"|x-amz-signature|x-amz-credential)=)[^&\s\"']+"
    ),
    # A bare credential, e.g. aiohttp quoting the start of an oversized Authorization header.
    re.compile(r"(?i)(\b(?:basic|bearer)\s+)[A-Za-z0-9+/=._~-]{16,}"),
)
# The user may be empty: redis://:password@host.
_USERINFO = re.compile(r"(://[^/\s:@]*:)[^@/\s]+(@)")
# aiohttp's parser errors quote the raw request bytes (an oversized header's first 100 bytes,
# with no header name to tell a Private-Token from anything else): none of them is logged.
_RAW_BYTES = re.compile(r"""\bb(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")
_AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access")
# A known secret is blanked where no letter or digit runs on from it: as a word, not as a
# piece of a longer one.
_TOKEN_CHARS = "A-Za-z0-9"
# Shorter secrets are too likely to be ordinary words ("pypi"); start-up warns about them.
MIN_SECRET_LENGTH = 8
MAX_USER_AGENT = 256
REDACTED = "[REDACTED]"
ACCESS_LOGGER = "proxy.access"
# The shared tier's credentials, read by its S3 client from the standard AWS environment.
_AWS_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Blank credential-shaped values, and each known secret where it stands as a whole token."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH and secret in text:
            whole = re.compile(f"(?<![{_TOKEN_CHARS}]){re.escape(secret)}(?![{_TOKEN_CHARS}])")
            text = whole.sub(REDACTED, text)
    return text


def redact_raw_bytes(text: str) -> str:
    """Blank every quoted bytes literal, which in aiohttp's errors is what a client sent."""
    return _RAW_BYTES.sub(f"b'{REDACTED}'", text)


class RedactingFilter(logging.Filter):
    """Renders each record's message once, redacted, so no handler sees a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def _redact(self, record: logging.LogRecord, text: str) -> str:
        text = redact(text, self.secrets)
        return redact_raw_bytes(text) if record.name.startswith(_AIOHTTP_LOGGERS) else text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record, record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._redact(
                record, logging.Formatter().formatException(record.exc_info)
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
        return json.dumps(entry, ensure_ascii=False)


def announce_start(settings: Settings) -> None:
    """What an operator checks first, once the port is bound; never the token itself."""
    up = settings.upstream
    server = settings.server
    logging.getLogger("proxy").info(
        "gitlab-pypi-proxy %s serving http://%s:%d/ in front of %s; credentials = %s, "
        "upstream token %s; cache in %s%s",
        version("gitlab-pypi-proxy"),
        f"[{server.host}]" if ":" in server.host else server.host,
        server.port,
        redact(up.url),
        up.credentials,
        "set" if up.token else "not set",
        settings.cache.dir.resolve(),
        f", shared tier {settings.storage.url}" if settings.storage.url else "",
    )


def setup_logging(log_format: str, secrets: Iterable[str], level: int = logging.INFO) -> None:
    """Root logging to stderr in `log_format` ('plain' or 'json'), redacting `secrets`."""
    handler = logging.StreamHandler(sys.stderr)
    aws = [os.environ[name] for name in _AWS_SECRETS if os.environ.get(name)]
    handler.addFilter(RedactingFilter([*secrets, *aws]))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
