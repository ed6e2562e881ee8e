"""Config loading: defaults, file then env overrides, token files, CI defaults, bad keys, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings, parse_size


def test_defaults_need_no_config() -> None:
    settings = load_settings(None, env={})
    assert settings.upstream.url == "https://gitlab.com"
    assert settings.cache.dir == Path("./cache")
    assert settings.server.host == "127.0.0.1"
    assert settings.cache.max_size == 20 * 1024**3


def test_example_config_is_the_defaults() -> None:
    example = Path(__file__).parents[2] / "config.example.toml"
    assert load_settings(example, env={}) == load_settings(None, env={})


def test_file_then_env_overrides(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[upstream]\nurl = "https://gitlab.example.com"\ntoken = "from-file"\n'
        '[cache]\nmax_size = "1GiB"\nindex_ttl = 10\n[access]\nallow = ["groups/7"]\n'
    )
    env = {
        "GITLAB_PYPI_PROXY_UPSTREAM_TOKEN": "from-env",
        "GITLAB_PYPI_PROXY_CACHE_OFFLINE": "true",
        "GITLAB_PYPI_PROXY_ACCESS_ALLOW": "groups/7, projects/42",
    }
    settings = load_settings(config, env=env)
    assert settings.upstream.url == "https://gitlab.example.com"
    assert settings.upstream.token == "from-env"
    assert settings.cache.max_size == 1024**3
    assert settings.cache.index_ttl == 10
    assert settings.cache.offline is True
    assert settings.access.allow == ("groups/7", "projects/42")
    assert "from-env" not in repr(settings)


def test_token_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("glpat-from-file\n")
    settings = load_settings(None, env={"GITLAB_PYPI_PROXY_UPSTREAM_TOKEN_FILE": str(secret)})
    assert settings.upstream.token == "glpat-from-file"


def test_ci_job_defaults_apply_only_without_an_upstream() -> None:
    ci = {"CI_SERVER_URL": "https://gitlab.corp", "CI_JOB_TOKEN": "job-123"}
    settings = load_settings(None, env=ci)
    assert (settings.upstream.url, settings.upstream.username, settings.upstream.token) == (
        "https://gitlab.corp",
        "gitlab-ci-token",
        "job-123",
    )
    configured = load_settings(None, env={**ci, "GITLAB_PYPI_PROXY_UPSTREAM_URL": "https://x.y"})
    assert configured.upstream.url == "https://x.y"
    assert configured.upstream.token == ""


def test_ci_service_gets_the_server_from_ci_and_the_token_from_config() -> None:
    """A service container sees CI_SERVER_URL but not CI_JOB_TOKEN (it is not public)."""
    env = {
        "CI_SERVER_URL": "https://gitlab.corp",
        "GITLAB_PYPI_PROXY_UPSTREAM_USERNAME": "gitlab-ci-token",
        "GITLAB_PYPI_PROXY_UPSTREAM_TOKEN": "job-123",
    }
    settings = load_settings(None, env=env)
    assert (settings.upstream.url, settings.upstream.username, settings.upstream.token) == (
        "https://gitlab.corp",
        "gitlab-ci-token",
        "job-123",
    )
    # A configured token is never paired with the job token's user name.
    mine = load_settings(
        None,
        env={
            "CI_SERVER_URL": "https://gitlab.corp",
            "CI_JOB_TOKEN": "job-123",
            "GITLAB_PYPI_PROXY_UPSTREAM_TOKEN": "gldt-mine",
        },
    )
    assert (mine.upstream.username, mine.upstream.token) == ("pypi-proxy", "gldt-mine")


@pytest.mark.parametrize(
    ("toml", "env", "names"),
    [
        ("[upstream]\ntokn = 'x'\n", {}, "upstream.tokn"),
        ("[nosuch]\n", {}, "nosuch"),
        ("[server]\nport = 'eighty'\n", {}, "server.port"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("[upstream]\ncredentials = 'steal'\n", {}, "upstream.credentials"),
        ("[upstream]\nurl = 'ftp://x'\n", {}, "upstream.url"),
        ("[cache]\nmax_size = 'lots'\n", {}, "cache.max_size"),
        ("[upstream]\nforwarding = 'cache'\n", {}, "upstream.forward_hosts"),
        ("", {"GITLAB_PYPI_PROXY_CACHE_OFFLINE": "maybe"}, "cache.offline"),
        ("", {"GITLAB_PYPI_PROXY_UPSTREAM_TOKNE": "x"}, "GITLAB_PYPI_PROXY_UPSTREAM_TOKNE"),
        ("[access]\nallow = ['users/1']\n", {}, "access.allow"),
        ("[server]\naccel_redirect = '_blobs'\n", {}, "server.accel_redirect"),
        ("not toml at all = = =", {}, "not valid TOML"),
        ("[storage]\nurl = 'https://bucket/prefix'\n", {}, "storage.url"),
        ("[storage]\nurl = 's3://'\n", {}, "storage.url"),
        ("[storage]\nurl = 's3://Not_A_Bucket/x'\n", {}, "storage.url"),
        ("", {"GITLAB_PYPI_PROXY_STORAGE_URL": "s3://key:secret@bucket/x"}, "storage.url"),
        ("[storage]\nendpoint_url = 'minio:9000'\n", {}, "storage.endpoint_url"),
        ("[storage]\ntimeout = 0\n", {}, "storage.timeout"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], names: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_settings(config, env=env)


def test_a_shared_tier_url_with_or_without_a_prefix(tmp_path: Path) -> None:
    for url in ("s3://pypi-cache", "s3://pypi-cache/prod", "s3://pypi.cache/a/b/"):
        settings = load_settings(None, env={"GITLAB_PYPI_PROXY_STORAGE_URL": url})
        assert settings.storage.url == url


def test_sizes() -> None:
    assert parse_size("20GiB") == 20 * 1024**3
    assert parse_size("256KiB") == 256 * 1024
    assert parse_size("1.5MB") == 1_500_000
    assert parse_size("123") == 123
    with pytest.raises(ValueError):
        parse_size("12 parsecs")
