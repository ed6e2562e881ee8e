"""Settings: frozen dataclasses loaded from TOML, then env overrides, with one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yarl

from . import credentials, policy

log = logging.getLogger(__name__)

ENV_PREFIX = "GITLAB_PYPI_PROXY_"
CONFIG_ENV = "GITLAB_PYPI_PROXY_CONFIG"

CredentialsMode = Literal["inject", "passthrough", "prefer-client"]
UploadCredentials = Literal["client", "inject"]
Forwarding = Literal["redirect", "deny", "cache"]
LogFormat = Literal["plain", "json"]
UnknownAge = Literal["allow", "deny"]
# A number of bytes, which the file and the environment may also write as '512MiB' or '20GB'.
ByteSize = Annotated[int, "bytes"]
# Seconds, which the file and the environment may also write as '7d', '12h', '30m' or '45s'.
Duration = Annotated[float, "seconds"]


CGROUP_ROOT = Path("/sys/fs/cgroup")


class ConfigError(Exception):
    """A config key or value that stops start-up; the message names the key."""


def usable_cpus() -> int:
    """The CPUs this process may run on, and no more than its cgroups' CPU quotas allow.

    A Kubernetes sidecar limited to one CPU sees every core of the node in its affinity mask;
    its quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`) is what it really gets.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def _cpu_quota() -> int | None:
    """The tightest CPU quota of this process's cgroup and its parents, in whole CPUs."""
    try:
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    files: list[tuple[str, str | None]]
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files = [("cpu.max", None)]
            base = CGROUP_ROOT
        elif "cpu" in controllers.split(","):
            files = [("cpu.cfs_quota_us", "cpu.cfs_period_us")]
            base = CGROUP_ROOT / controllers
        else:
            continue
        # Parents limit their children too; a container sees its own cgroup as the root.
        group = base / path.lstrip("/")
        for directory in (group, *group.parents):
            if not directory.is_relative_to(base):
                break
            for quota_file, period_file in files:
                try:
                    fields = (directory / quota_file).read_text().split()
                    if period_file is not None:
                        fields.append((directory / period_file).read_text().strip())
                except OSError:
                    continue
                if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                    quota, period = int(fields[0]), int(fields[1])
                    if quota > 0 and period > 0:
                        quotas.append(-(-quota // period))
    return min(quotas) if quotas else None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Absolute links are built from this, never from the request's Host header.
    public_url: str = ""
    # "auto" in the file or the environment: usable_cpus().
    workers: int = field(default_factory=usable_cpus)
    log_format: LogFormat = "plain"
    shutdown_grace: float = 10.0
    accel_redirect: str = ""
    # One log line per request, written in batches off the request path.
    access_log: bool = True
    # A new connection must send its request headers within this (nginx's client_header_timeout).
    header_timeout: float = 60.0
    # An idle connection between requests is closed after this (nginx's keepalive_timeout).
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = "https://gitlab.com"
    username: str = "pypi-proxy"
    token: str = field(default="", repr=False)
    token_file: str = ""
    credentials: CredentialsMode = "inject"
    upload_credentials: UploadCredentials = "client"
    timeout: float = 30.0
    forwarding: Forwarding = "redirect"
    forward_hosts: tuple[str, ...] = ()
    auth_ttl: float = 60.0
    max_upload_size: ByteSize = 0
    user_agent: str = "gitlab-pypi-proxy"
    # A bigger simple page is refused (502) as it arrives, before it is all in memory.
    max_page_size: ByteSize = 64 * 1024**2
    # While a page keeps failing upstream, its last good copy is served and GitLab is asked
    # again at most once per this many seconds (or per Retry-After, when GitLab gives one).
    retry_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    dir: Path = Path("./cache")
    max_size: ByteSize = 20 * 1024**3
    index_ttl: float = 300.0
    negative_ttl: float = 60.0
    offline: bool = False
    # Small files are also kept in memory, up to this many bytes in all.
    memory_size: ByteSize = 64 * 1024**2
    memory_file_max: ByteSize = 256 * 1024
    # How often an unwritable, full or read-only cache directory is probed again; caching
    # resumes at the first probe that finds it writable.
    recheck_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class AccessSettings:
    allow: tuple[str, ...] = ()
    tokens_file: str = ""
    # Hash lines (`hash-token`) of tokens that see the whole status page in passthrough and
    # prefer-client modes; everyone else sees counts and health without any name.
    ops_tokens: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    # Replicas publish the names of uploaded projects here and drop their cached pages of
    # the names the others publish. Its password is a secret: never shown.
    redis_url: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The supply-chain rules (policy.py reads them): what clients may see and download."""

    # Public-index files younger than this are hidden from pages and refused (403).
    min_age: Duration = 0.0
    # The same for files hosted in GitLab: a team's own packages install right after publishing.
    min_age_internal: Duration = 0.0
    # Names, or "name==version", the minimum ages never apply to.
    exempt: tuple[str, ...] = ()
    # Under a minimum age, a file whose upload time is not known: shown, or hidden and refused.
    unknown_age: UnknownAge = "allow"
    # fnmatch patterns on normalized names never taken from the public index.
    protected: tuple[str, ...] = ()
    # "name==version: reason" or "filename: reason": yanked here (PEP 592), as GitLab cannot.
    yanked: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StorageSettings:
    # "s3://bucket[/prefix]": a shared tier behind the local disk; empty: the local disk only.
    url: str = ""
    # An S3-compatible endpoint (MinIO, Ceph RGW...); empty: AWS. Credentials come from the
    # standard AWS environment, never from this file.
    endpoint_url: str = ""
    region: str = ""
    # Seconds to connect and between bytes: a slow tier is skipped for GitLab, not waited on.
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "upstream": UpstreamSettings,
    "cache": CacheSettings,
    "access": AccessSettings,
    "cluster": ClusterSettings,
    "policy": PolicySettings,
    "storage": StorageSettings,
}
# Kubernetes' service links, after the service's name: `_SERVICE_HOST`, `_PORT_8080_TCP_ADDR`...
_SERVICE_LINK_RE = re.compile(
    r"(?:\w+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)"
)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """'20GiB' → bytes; binary units with 'i', decimal without."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 512MiB, 20GiB)")
    number, unit = match.groups()
    unit = (unit or "").upper()
    if "I" in unit:
        factor = 1024 ** ("KMGT".index(unit[0]) + 1)
    else:
        factor = _SIZE_UNITS[unit.rstrip("B") if unit != "B" else "B"]
    return int(float(number) * factor)


def parse_duration(text: str) -> float:
    """'7d' → seconds; units s, m, h, d, w, or none for plain seconds."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m or seconds)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]


def _convert(key: str, hint: Any, raw: Any, *, from_env: bool) -> Any:
    """Turn a TOML or env value into the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if key == "server.workers" and raw == "auto":
        return usable_cpus()
    if hint == ByteSize:
        return int(_measure(key, raw, parse_size, "a size like '20GiB'", integral=True))
    if hint == Duration:
        return float(_measure(key, raw, parse_duration, "a duration like '7d'", integral=False))
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ConfigError(f"{key}: {raw!r} is not one of {', '.join(map(repr, choices))}")
        return raw
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if hint is int or hint is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        try:
            number = hint(raw) if from_env or isinstance(raw, int | float) else None
        except ValueError:
            number = None
        if number is None or (hint is int and isinstance(raw, float)):
            raise ConfigError(
                f"{key}: expected {'an integer' if hint is int else 'a number'}, got {raw!r}"
            )
        if number < 0:
            raise ConfigError(f"{key}: must not be negative")
        return number
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{key}: expected a string, got {raw!r}")
        return raw
    if hint is Path:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{key}: expected a path, got {raw!r}")
        return Path(raw)
    if origin is tuple:
        # From the environment: comma-separated, or one item a line (yank reasons have commas).
        separator = "\n" if from_env and "\n" in raw else ","
        items = [s.strip() for s in raw.split(separator) if s.strip()] if from_env else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}: expected a list of strings, got {raw!r}")
        return tuple(items)
    raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover - a coding error


def _section_values(
    name: str, cls: type[Any], table: Mapping[str, Any], env: Mapping[str, str]
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in names:
            raise ConfigError(f"{name}.{key}: unknown key{_did_you_mean(key, names, name + '.')}")
        values[key] = _convert(f"{name}.{key}", hints[key], raw, from_env=False)
    for fname in names:
        env_name = f"{ENV_PREFIX}{name.upper()}_{fname.upper()}"
        if env_name in env:
            values[fname] = _convert(f"{name}.{fname}", hints[fname], env[env_name], from_env=True)
    return values


def _did_you_mean(wrong: str, known: Iterable[str], prefix: str = "") -> str:
    """'; did you mean server.port?' when one known name is close to `wrong`, else ''."""
    close = difflib.get_close_matches(wrong, sorted(known), n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _check_env_names(env: Mapping[str, str]) -> None:
    """A variable naming a known section must name a known key; any other is not ours.

    Kubernetes gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_8080_TCP_ADDR` and
    so on for each Service, so a Service named gitlab-pypi-proxy puts GITLAB_PYPI_PROXY_SERVICE_*
    and GITLAB_PYPI_PROXY_PORT* into our namespace: those name no section and are ignored.
    """
    ignored = []
    for env_name in env:
        if not env_name.startswith(ENV_PREFIX) or env_name == CONFIG_ENV:
            continue
        rest = env_name.removeprefix(ENV_PREFIX)
        # "SERVER_" with its underscore: SERVICE_HOST must not be taken for the server section.
        section = next((s for s in _SECTIONS if rest.startswith(f"{s.upper()}_")), None)
        if section is None:
            ignored.append(env_name)
            continue
        keys = {f.name.upper() for f in dataclasses.fields(_SECTIONS[section])}
        key = rest.removeprefix(f"{section.upper()}_")
        if key not in keys and _SERVICE_LINK_RE.fullmatch(key):
            # A Service named e.g. gitlab-pypi-proxy-cache: Kubernetes' name, not a typo of ours.
            ignored.append(env_name)
        elif key not in keys:
            hint = _did_you_mean(key, keys, f"{ENV_PREFIX}{section.upper()}_")
            raise ConfigError(f"{env_name}: unknown setting{hint}")
    if ignored:
        log.debug("ignoring variables that name no config section: %s", ", ".join(ignored))


def _validate(settings: Settings) -> None:
    up = settings.upstream
    url = yarl.URL(up.url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"upstream.url: {up.url!r} is not an http(s) URL")
    if settings.server.public_url:
        public = yarl.URL(settings.server.public_url)
        if public.scheme not in ("http", "https") or not public.host:
            raise ConfigError(
                f"server.public_url: {settings.server.public_url!r} is not an http(s) URL"
            )
    if not 0 < settings.server.port < 65536:
        raise ConfigError(f"server.port: {settings.server.port} is not a TCP port")
    if settings.server.workers < 1:
        raise ConfigError("server.workers: must be at least 1")
    accel = settings.server.accel_redirect
    if accel and not re.fullmatch(r"/(?:[A-Za-z0-9._~-]+/)+", accel):
        raise ConfigError(
            f"server.accel_redirect: {accel!r} is not a location like '/_blobs/' (slashes around)"
        )
    for key in ("header_timeout", "keepalive_timeout"):
        if getattr(settings.server, key) <= 0:
            raise ConfigError(f"server.{key}: must be more than 0 seconds")
    if up.timeout <= 0:
        raise ConfigError("upstream.timeout: must be more than 0 seconds")
    if up.forwarding == "cache" and not up.forward_hosts:
        raise ConfigError(
            "upstream.forward_hosts: must name the public index's hosts when forwarding = 'cache'"
        )
    if (conflict := credentials.tokens_file_conflict(settings)) is not None:
        raise ConfigError(conflict)
    _validate_storage(settings.storage)
    for scope in settings.access.allow:
        if not re.match(r"^(projects|groups)/[^/]+$", scope):
            raise ConfigError(f"access.allow: {scope!r} is not 'projects/ID' or 'groups/ID'")
    _validate_policy(settings.policy)
    if settings.cluster.redis_url and (problem := redis_url_problem(settings.cluster.redis_url)):
        # The URL itself is not quoted: it may carry Redis's password.
        raise ConfigError(f"cluster.redis_url: {problem} (e.g. 'redis://redis:6379/0')")


def _validate_policy(settings: PolicySettings) -> None:
    for key, parse in (
        ("exempt", policy.parse_exempt),
        ("protected", policy.parse_pattern),
        ("yanked", policy.parse_yank),
    ):
        for entry in getattr(settings, key):
            try:
                parse(entry)
            except ValueError as e:
                raise ConfigError(f"policy.{key}: {e}") from None


def inert_settings(settings: Settings) -> list[str]:
    """Legal combinations that do less than they seem, one line each, for `serve` to warn of."""
    found = []
    rules, up = settings.policy, settings.upstream
    if rules.min_age and up.forwarding == "redirect":
        found.append(
            "policy.min_age is set, but upstream.forwarding = 'redirect' sends the clients of a "
            "name the upstream forwards to the public index itself, where no minimum age can "
            "apply; upstream.forwarding = 'cache' keeps them here"
        )
    if rules.unknown_age == "deny" and not rules.min_age and not rules.min_age_internal:
        found.append(
            "policy.unknown_age = 'deny' does nothing: it applies only under a minimum age, "
            "and policy.min_age and policy.min_age_internal are both 0"
        )
    return found


def _measure(
    key: str, raw: Any, parse: Callable[[str], float], example: str, *, integral: bool
) -> float:
    """A size or a duration: a plain number (an int only when `integral`), or text with a unit
    that `parse` reads; never negative."""
    numbers = (int,) if integral else (int, float)
    if isinstance(raw, numbers) and not isinstance(raw, bool):
        value = raw if integral else float(raw)
    elif isinstance(raw, str):
        try:
            value = parse(raw)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    else:
        raise ConfigError(f"{key}: expected {example}, got {raw!r}")
    if value < 0:
        raise ConfigError(f"{key}: must not be negative")
    return value


def redis_url_problem(text: str) -> str | None:
    """Why `text` is not a Redis URL the cluster can use, or None."""
    try:
        url = yarl.URL(text)
        port = url.port
    except ValueError:
        return "not a URL"
    if url.scheme not in ("redis", "rediss"):
        return "not a redis:// or rediss:// URL"
    if not url.host:
        return "names no host"
    if port == 0:
        return "names no TCP port"
    database = url.path.strip("/")
    if database and not database.isdigit():
        return "its path must be a database number"
    return None


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A URL's user and password, and the "@" after them: to the last "@", as AWS secret keys
# may hold a "/".
_USERINFO_RE = re.compile(r"://.*@")


def _validate_storage(storage: StorageSettings) -> None:
    # Credentials come from the AWS environment: a URL carrying some is refused, never quoted.
    if storage.url and not _is_bucket_url(storage.url):
        raise ConfigError(
            f"storage.url: {_without_userinfo(storage.url)!r} is not s3://bucket[/prefix] "
            "(no user, password, port or query)"
        )
    if storage.endpoint_url and not _is_endpoint_url(storage.endpoint_url):
        raise ConfigError(
            f"storage.endpoint_url: {_without_userinfo(storage.endpoint_url)!r} is not an "
            "http(s) URL without a user or password"
        )
    if storage.timeout <= 0:
        raise ConfigError("storage.timeout: must be more than 0 seconds")


def _is_bucket_url(text: str) -> bool:
    try:
        url = yarl.URL(text)
        port = url.port
    except ValueError:
        return False
    return (
        url.scheme == "s3"
        and _BUCKET_RE.fullmatch(url.raw_host or "") is not None
        and url.user is None
        and url.password is None
        and port is None
        and not url.query_string
        and not url.fragment
    )


def _is_endpoint_url(text: str) -> bool:
    try:
        url = yarl.URL(text)
        _ = url.port
    except ValueError:
        return False
    return (
        url.scheme in ("http", "https")
        and bool(url.host)
        and url.user is None
        and url.password is None
    )


def _without_userinfo(text: str) -> str:
    """A URL as an error may quote it: what lies between "://" and the last "@" left out."""
    return _USERINFO_RE.sub("://", text)


def _ci_defaults(env: Mapping[str, str], configured: Mapping[str, Any]) -> dict[str, Any]:
    """Inside a GitLab CI job with no upstream configured, the job's own server and token."""
    if "url" in configured or not env.get("CI_SERVER_URL"):
        return {}
    defaults: dict[str, Any] = {"url": env["CI_SERVER_URL"]}
    # A CI service container sees only the job's public variables, CI_SERVER_URL but not
    # CI_JOB_TOKEN: then the token comes from upstream.token, and the server still from CI.
    if env.get("CI_JOB_TOKEN") and not {"token", "token_file"} & configured.keys():
        defaults.update(username="gitlab-ci-token", token=env["CI_JOB_TOKEN"])
    return defaults


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then GITLAB_PYPI_PROXY_<SECTION>_<KEY> env overrides."""
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    document: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for section, table in document.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section{_did_you_mean(section, _SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
    _check_env_names(env)
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = _section_values(name, cls, document.get(name, {}), env)
        if name == "upstream":
            values = {**_ci_defaults(env, values), **values}
        sections[name] = cls(**values)
    settings = Settings(**sections)
    settings = _with_token_file(settings)
    _validate(settings)
    return settings


def _with_token_file(settings: Settings) -> Settings:
    up = settings.upstream
    if not up.token_file:
        return settings
    if up.token:
        raise ConfigError("upstream.token_file: set either token or token_file, not both")
    try:
        token = Path(up.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"upstream.token_file: cannot read {up.token_file!r} ({e})") from None
    return dataclasses.replace(settings, upstream=dataclasses.replace(up, token=token))
