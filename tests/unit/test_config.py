"""Settings conversions: sizes by field type, durations, env overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, Settings, inert_settings, load_settings


def _load(tmp_path: Path, toml: str, **env: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    return load_settings(path, env)


def test_every_size_setting_takes_units_and_plain_bytes(tmp_path: Path) -> None:
    # Each is a size by its field's type (config.ByteSize); a plain int field refuses "20GiB".
    settings = _load(
        tmp_path,
        """
        [cache]
        max_size = "20GiB"
        memory_size = "1.5MB"
        memory_file_max = 4096
        [upstream]
        max_upload_size = "2 GB"
        max_page_size = "64MiB"
        """,
    )
    assert settings.cache.max_size == 20 * 1024**3
    assert settings.cache.memory_size == 1_500_000
    assert settings.cache.memory_file_max == 4096
    assert settings.upstream.max_upload_size == 2 * 1000**3
    assert settings.upstream.max_page_size == 64 * 1024**2


def test_durations_are_seconds_as_numbers(tmp_path: Path) -> None:
    settings = _load(tmp_path, "[cache]\nindex_ttl = 2.5\nnegative_ttl = 7\n")
    assert settings.cache.index_ttl == 2.5
    assert settings.cache.negative_ttl == 7.0
    with pytest.raises(ConfigError, match=r"^cache\.index_ttl: expected a number, got '5m'$"):
        _load(tmp_path, '[cache]\nindex_ttl = "5m"\n')


def test_the_environment_overrides_the_file_and_is_converted_alike(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        '[cache]\nmax_size = "1GiB"\nindex_ttl = 10\noffline = false\n',
        GITLAB_PYPI_PROXY_CACHE_MAX_SIZE="512MiB",
        GITLAB_PYPI_PROXY_CACHE_INDEX_TTL="0.5",
        GITLAB_PYPI_PROXY_CACHE_OFFLINE="yes",
        GITLAB_PYPI_PROXY_UPSTREAM_FORWARD_HOSTS="pypi.org, files.pythonhosted.org",
        GITLAB_PYPI_PROXY_UPSTREAM_FORWARDING="cache",
    )
    assert settings.cache.max_size == 512 * 1024**2
    assert settings.cache.index_ttl == 0.5
    assert settings.cache.offline is True
    assert settings.upstream.forward_hosts == ("pypi.org", "files.pythonhosted.org")


@pytest.mark.parametrize(
    ("toml", "env", "error"),
    [
        ('[cache]\nmax_size = "12 parsecs"', {}, "cache.max_size: not a size: '12 parsecs'"),
        ("[cache]\nmax_size = -1", {}, "cache.max_size: must not be negative"),
        ("[upstream]\nmax_page_size = true", {}, "upstream.max_page_size: expected a size"),
        ("", {"GITLAB_PYPI_PROXY_CACHE_MEMORY_SIZE": "lots"}, "cache.memory_size: not a size"),
        ("[server]\nshutdown_grace = -3", {}, "server.shutdown_grace: must not be negative"),
        ("", {"GITLAB_PYPI_PROXY_SERVER_PORT": "http"}, "server.port: expected an integer"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_key(
    tmp_path: Path, toml: str, env: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, toml, **env)
    message = str(raised.value)
    assert message.startswith(error)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://:s3cret-pass@redis:6379/0", "not a redis:// or rediss:// URL"),
        ("redis://:s3cret-pass@:6379/0", "names no host"),
        ("redis://:s3cret-pass@redis:0/0", "names no TCP port"),
        ("redis://:s3cret-pass@redis:99999/0", "not a URL"),
        ("redis://:s3cret-pass@redis:6379/cache", "its path must be a database number"),
        ("redis://:s3cret-pass@[::1/0", "not a URL"),
    ],
)
def test_a_bad_redis_url_stops_start_up_without_showing_its_password(
    tmp_path: Path, url: str, error: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, f'[cluster]\nredis_url = "{url}"')
    message = str(raised.value)
    assert message.startswith(f"cluster.redis_url: {error}")
    assert "\n" not in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("url", "s3://AKIAEXAMPLE:s3cret-key@pypi-cache/prod"),
        ("url", "s3://:s3cret-key@pypi-cache/prod"),
        ("url", "s3://AKIAEXAMPLE:s3cret/key@pypi-cache/prod"),
        ("url", "s3://AKIAEXAMPLE:s3cret-key@pypi-cache:99999/prod"),
        ("endpoint_url", "https://minio:s3cret-key@minio.internal:9000"),
        ("endpoint_url", "https://:s3cret-key@minio.internal:9000"),
        ("endpoint_url", "https://minio:s3cret-key@[::1"),
    ],
)
def test_a_storage_url_with_credentials_stops_start_up_without_showing_them(
    tmp_path: Path, key: str, url: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, f'[storage]\n{key} = "{url}"')
    message = str(raised.value)
    assert message.startswith(f"storage.{key}: ")
    assert "s3cret" not in message


def test_a_redis_url_is_taken_from_the_environment_and_never_repr_d(tmp_path: Path) -> None:
    url = "rediss://proxy:s3cret-pass@redis.internal:6380/2"
    settings = _load(tmp_path, "", GITLAB_PYPI_PROXY_CLUSTER_REDIS_URL=url)
    assert settings.cluster.redis_url == url
    assert "s3cret" not in repr(settings)
    assert _load(tmp_path, "").cluster.redis_url == ""


@pytest.mark.parametrize(
    ("toml", "env", "keys"),
    [
        # The defaults, and every combination that does what it says: nothing to say.
        ("", {}, []),
        (
            '[policy]\nmin_age = "7d"\n[upstream]\nforwarding = "cache"\n'
            'forward_hosts = ["pypi.org"]',
            {},
            [],
        ),
        ('[policy]\nmin_age = "7d"\n[upstream]\nforwarding = "deny"', {}, []),
        ('[policy]\nunknown_age = "deny"\nmin_age_internal = "1h"', {}, []),
        # A minimum age the public index's redirect escapes (the default forwarding).
        ('[policy]\nmin_age = "7d"', {}, [("policy.min_age", "upstream.forwarding")]),
        # unknown_age without any minimum age, from the file or the environment.
        (
            '[policy]\nunknown_age = "deny"',
            {},
            [("policy.unknown_age", "policy.min_age", "policy.min_age_internal")],
        ),
        (
            "",
            {"GITLAB_PYPI_PROXY_POLICY_UNKNOWN_AGE": "deny"},
            [("policy.unknown_age", "policy.min_age", "policy.min_age_internal")],
        ),
        (
            '[policy]\nunknown_age = "deny"\nmin_age = "7d"',
            {},
            [("policy.min_age", "upstream.forwarding")],
        ),
    ],
)
def test_legal_settings_that_do_less_than_they_seem_are_named_at_start_up(
    tmp_path: Path, toml: str, env: dict[str, str], keys: list[tuple[str, ...]]
) -> None:
    found = inert_settings(_load(tmp_path, toml, **env))
    assert len(found) == len(keys)
    for line, named in zip(found, keys, strict=True):
        assert "\n" not in line
        assert all(key in line for key in named), line
