"""The [policy] rules: parsing (one-line errors naming the key), a verdict per file at a moment."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.config import ConfigError, PolicySettings, load_settings
from proxy.policy import Policy, Verdict, duration_text, iso, parse_pattern, parse_upload_time
from proxy.simple import Distribution

DAY = 86400.0
UPLOADED = "2026-11-30T10:00:00.000000Z"
T0 = datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp()


def wheel(
    name: str, version: str, *, public: bool = False, uploaded: str | None = UPLOADED
) -> Distribution:
    filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return Distribution(filename, f"https://h/{filename}", upload_time=uploaded, public=public)


def test_durations_take_units_and_plain_seconds(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[policy]\nmin_age = "7d"\nmin_age_internal = 90\n')
    settings = load_settings(path, {"GITLAB_PYPI_PROXY_POLICY_MIN_AGE": "12h"})
    assert settings.policy.min_age == 12 * 3600
    assert settings.policy.min_age_internal == 90
    path.write_text('[policy]\nmin_age = "30m"\nmin_age_internal = "1.5h"\n')
    settings = load_settings(path, {})
    assert (settings.policy.min_age, settings.policy.min_age_internal) == (1800, 5400)
    assert load_settings(None, {}).policy == PolicySettings()


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ('min_age = "a week"', {}, "policy.min_age"),
        ('min_age = "-1d"', {}, "policy.min_age"),
        ("min_age_internal = true", {}, "policy.min_age_internal"),
        ("", {"GITLAB_PYPI_PROXY_POLICY_MIN_AGE": "7 days"}, "policy.min_age"),
        ('unknown_age = "maybe"', {}, "policy.unknown_age"),
        ('exempt = ["not a name"]', {}, "policy.exempt"),
        ('exempt = ["foo==not-a-version"]', {}, "policy.exempt"),
        ('protected = ["acme/*"]', {}, "policy.protected"),
        ('protected = ["acme-[ab"]', {}, "policy.protected"),
        ('protected = [""]', {}, "policy.protected"),
        ('yanked = ["just-a-name: why"]', {}, "policy.yanked"),
        ('yanked = ["foo==1..0: why"]', {}, "policy.yanked"),
        ("", {"GITLAB_PYPI_PROXY_POLICY_YANKED": "nonsense"}, "policy.yanked"),
        ("nonsense = 1", {}, "policy.nonsense"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], key: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[policy]\n{toml}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, env)
    assert str(raised.value).startswith(key)
    assert "\n" not in str(raised.value)


def test_yank_lines_from_the_environment_may_be_one_a_line_with_commas_in_reasons() -> None:
    env = {
        "GITLAB_PYPI_PROXY_POLICY_YANKED": "corp-util==1.0: broken, use 1.1\ncorp_lib-2.0.tar.gz"
    }
    policy = Policy(load_settings(None, env).policy)
    assert policy.yanked("corp-util", wheel("corp-util", "1.0")) == "broken, use 1.1"
    assert policy.yanked("corp-lib", Distribution("corp_lib-2.0.tar.gz", "https://h/x")) is True


def test_age_rules_hide_young_files_until_they_are_old_enough() -> None:
    policy = Policy(PolicySettings(min_age=7 * DAY, min_age_internal=3600))
    public = wheel("requests", "2.0", public=True)
    internal = wheel("corp-util", "2.0")
    assert policy.verdict("requests", public, T0 + DAY) == Verdict(False, "min_age", T0 + 7 * DAY)
    assert policy.verdict("requests", public, T0 + 7 * DAY).visible
    assert policy.verdict("corp-util", internal, T0 + 60) == Verdict(
        False, "min_age_internal", T0 + 3600
    )
    assert policy.verdict("corp-util", internal, T0 + 3600).visible


def test_internal_packages_have_no_minimum_unless_one_is_set() -> None:
    policy = Policy(PolicySettings(min_age=7 * DAY))
    assert policy.verdict("corp-util", wheel("corp-util", "2.0"), T0).visible
    assert not policy.verdict("requests", wheel("requests", "2.0", public=True), T0).visible


def test_exemptions_by_name_or_release() -> None:
    policy = Policy(PolicySettings(min_age=DAY, exempt=("Requests", "urllib3==2.0")))
    assert policy.verdict("requests", wheel("requests", "9.0", public=True), T0).visible
    assert policy.verdict("urllib3", wheel("urllib3", "2.0.0", public=True), T0).visible
    assert not policy.verdict("urllib3", wheel("urllib3", "2.1", public=True), T0).visible
    assert not policy.may_hide("requests", "requests-9.0-py3-none-any.whl")
    assert policy.may_hide("urllib3", "urllib3-2.1-py3-none-any.whl")


def test_unknown_upload_times_follow_unknown_age_under_a_minimum_only() -> None:
    unknown = wheel("corp-util", "1.0", uploaded=None)
    allow = Policy(PolicySettings(min_age_internal=DAY))
    deny = Policy(PolicySettings(min_age_internal=DAY, unknown_age="deny"))
    assert allow.verdict("corp-util", unknown, T0).visible
    assert deny.verdict("corp-util", unknown, T0) == Verdict(False, "unknown_age")
    # Without a minimum age there is nothing to judge an upload time by.
    assert Policy(PolicySettings(unknown_age="deny")).verdict("corp-util", unknown, T0).visible
    garbled = wheel("corp-util", "1.0", uploaded="yesterday")
    assert deny.verdict("corp-util", garbled, T0) == Verdict(False, "unknown_age")


def test_protected_patterns_match_normalized_names() -> None:
    policy = Policy(PolicySettings(protected=("Acme_*", "corp-util", "team-[ab]")))
    assert policy.protects
    assert policy.is_protected("acme-tools")
    assert policy.is_protected("ACME.Tools")
    assert policy.is_protected("corp_util")
    assert policy.is_protected("team-a")
    assert not policy.is_protected("team-c")
    assert not policy.is_protected("corp-util2")
    assert not policy.is_protected("requests")
    assert not Policy(PolicySettings()).is_protected("acme-tools")
    assert parse_pattern("Acme__Tools.*") == "acme-tools-*"


def test_local_yanks_by_release_or_filename_with_their_reasons() -> None:
    policy = Policy(
        PolicySettings(
            yanked=(
                "Corp_Util==1.0: broken: use 1.1",
                "corp_lib-2.0-py3-none-any.whl",
            )
        )
    )
    assert policy.yanks
    assert policy.yanked("corp-util", wheel("corp-util", "1.0.0")) == "broken: use 1.1"
    assert policy.yanked("corp-util", wheel("corp-util", "1.1")) is False
    assert policy.yanked("corp-lib", wheel("corp-lib", "2.0")) is True
    upstream_yank = Distribution("x-1.0.tar.gz", "https://h/x", yanked="upstream says so")
    assert policy.yanked("x", upstream_yank) == "upstream says so"


def test_messages_name_the_rule_and_the_moment() -> None:
    policy = Policy(PolicySettings(min_age=7 * DAY))
    verdict = policy.verdict("requests", wheel("requests", "2.0", public=True), T0)
    message = policy.message("requests-2.0-py3-none-any.whl", verdict)
    assert message == (
        "requests-2.0-py3-none-any.whl is younger than policy.min_age (7d): "
        "available from 2026-12-07T10:00:00Z"
    )
    assert "unknown_age" in policy.message("f.whl", Verdict(False, "unknown_age"))
    assert "policy.protected" in policy.message("f.whl", Verdict(False, "protected"))


def test_time_helpers() -> None:
    assert parse_upload_time(UPLOADED) == T0
    assert parse_upload_time("2026-11-30T10:00:00") == T0
    assert parse_upload_time("2026-11-30T11:00:00+01:00") == T0
    assert parse_upload_time(None) is None
    assert iso(T0) == "2026-11-30T10:00:00Z"
    assert [duration_text(s) for s in (604800, 86400, 7200, 1800, 45, 90)] == [
        "7d",
        "1d",
        "2h",
        "30m",
        "45s",
        "90s",
    ]
