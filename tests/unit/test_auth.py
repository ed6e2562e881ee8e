"""Gatekeeper: GitLab's answers to a client are remembered for auth_ttl by the injected clock."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from proxy.auth import Caller, Gatekeeper
from proxy.config import UpstreamSettings
from proxy.errors import GitLabChallenge, UpstreamStatus
from proxy.scope import Scope
from tests.support.memory_upstream import ORIGIN, FakeClock, MemoryUpstream

AUTH_TTL = 60.0
SCOPE = Scope("projects", "42")
SHA = "b" * 64
FILE = ORIGIN.with_path(f"/api/v4/projects/42/packages/pypi/files/{SHA}/demo-1.0.tar.gz")
SETTINGS = UpstreamSettings(
    url=str(ORIGIN), username="proxy", token="secret", credentials="passthrough", auth_ttl=AUTH_TTL
)


def basic(user: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def gatekeeper(settings: UpstreamSettings = SETTINGS) -> tuple[Gatekeeper, FakeClock]:
    clock = FakeClock()
    return Gatekeeper(settings, MemoryUpstream(), clock=clock), clock


def client(gate: Gatekeeper, personal: str = "glpat-1") -> Caller:
    caller = gate.caller(basic("ci", personal))
    assert caller.is_client
    return caller


def test_gitlabs_yes_lets_a_client_read_cached_pages_until_auth_ttl() -> None:
    gate, clock = gatekeeper()
    caller = client(gate)
    assert not gate.page_trust(caller, SCOPE).cached
    gate.page_answer(caller, SCOPE, 200, "", False, index=False)
    clock.advance(AUTH_TTL - 1)
    assert gate.page_trust(caller, SCOPE).cached
    # Another credential is asked about on its own.
    assert not gate.page_trust(client(gate, "glpat-2"), SCOPE).cached
    clock.advance(2)
    assert gate.decision(caller, SCOPE) is None
    assert not gate.page_trust(caller, SCOPE).cached


def test_gitlabs_no_is_answered_from_memory_until_auth_ttl() -> None:
    gate, clock = gatekeeper()
    caller = client(gate)
    gate.page_answer(caller, SCOPE, 401, "401 Unauthorized", False, index=False)
    with pytest.raises(GitLabChallenge):
        gate.page_trust(caller, SCOPE)
    with pytest.raises(GitLabChallenge):
        gate.refuse_if_refused(caller, SCOPE)
    clock.advance(AUTH_TTL + 1)
    gate.refuse_if_refused(caller, SCOPE)
    assert not gate.page_trust(caller, SCOPE).cached


def test_a_404_for_a_package_page_is_not_a_no_but_for_the_index_it_is() -> None:
    gate, _ = gatekeeper()
    caller = client(gate)
    gate.page_answer(caller, SCOPE, 404, "404 Not Found", False, index=False)
    assert gate.decision(caller, SCOPE) is None
    gate.page_answer(caller, SCOPE, 404, "404 Not Found", False, index=True)
    with pytest.raises(UpstreamStatus):
        gate.refuse_if_refused(caller, SCOPE)


def test_the_proxys_own_token_and_a_zero_auth_ttl_remember_nothing() -> None:
    gate, _ = gatekeeper(dataclasses.replace(SETTINGS, credentials="inject"))
    own = gate.caller(basic("ci", "glpat-1"))
    assert not own.is_client
    assert gate.page_trust(own, SCOPE).cached
    gate, _ = gatekeeper(dataclasses.replace(SETTINGS, auth_ttl=0))
    caller = client(gate)
    gate.page_answer(caller, SCOPE, 200, "", False, index=False)
    assert gate.decision(caller, SCOPE) is None


async def test_a_cached_file_is_probed_once_per_auth_ttl() -> None:
    gate, clock = gatekeeper()
    upstream = gate.upstream
    assert isinstance(upstream, MemoryUpstream)
    upstream.probes[FILE] = 200
    caller = client(gate)
    await gate.check_cached_file(caller, SCOPE, SHA, FILE)
    await gate.check_cached_file(caller, SCOPE, SHA, FILE)
    assert upstream.probe_calls == [(FILE, caller.authorization)]
    clock.advance(AUTH_TTL + 1)
    await gate.check_cached_file(caller, SCOPE, SHA, FILE)
    assert len(upstream.probe_calls) == 2


async def test_a_refused_cached_file_stays_refused_until_auth_ttl() -> None:
    gate, clock = gatekeeper()
    upstream = gate.upstream
    assert isinstance(upstream, MemoryUpstream)
    upstream.probes[FILE] = 403
    caller = client(gate)
    for _ in range(2):
        with pytest.raises(UpstreamStatus):
            await gate.check_cached_file(caller, SCOPE, SHA, FILE)
    assert len(upstream.probe_calls) == 1
    upstream.probes[FILE] = 200
    clock.advance(AUTH_TTL + 1)
    await gate.check_cached_file(caller, SCOPE, SHA, FILE)
    assert len(upstream.probe_calls) == 2


async def test_a_listed_file_needs_no_probe_with_a_yes_for_the_scope() -> None:
    gate, _ = gatekeeper()
    upstream = gate.upstream
    assert isinstance(upstream, MemoryUpstream)
    caller = client(gate)
    gate.page_answer(caller, SCOPE, 200, "", False, index=False)
    gate.listed(caller.view(SCOPE), [SHA])
    await gate.check_cached_file(caller, SCOPE, SHA, FILE)
    assert upstream.probe_calls == []
