"""Credential rules: never off the origin, which refusals judge a token, what a caller may see."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import (
    AccessSettings,
    CacheSettings,
    CredentialsMode,
    ServerSettings,
    Settings,
    UpstreamSettings,
)
from proxy.credentials import (
    CredentialPolicy,
    credential_headers,
    outgoing_headers,
    own_upload_refused,
    page_trust,
    page_verdict,
    refuses_credentials,
    tokens_file_conflict,
)
from proxy.errors import Forbidden, UpstreamError


def settings(
    tmp_path: Path, *, credentials: CredentialsMode = "inject", tokens_file: str = ""
) -> Settings:
    return Settings(
        server=ServerSettings(host="127.0.0.1", port=8080),
        upstream=UpstreamSettings(
            url="http://gitlab.test",
            username="proxy",
            token="secret",
            credentials=credentials,
        ),
        cache=CacheSettings(dir=tmp_path),
        access=AccessSettings(tokens_file=tokens_file),
    )


def test_credentials_go_to_the_origin_only() -> None:
    assert outgoing_headers("Basic abc", to_origin=True) == {"Authorization": "Basic abc"}
    assert outgoing_headers("Private-Token glpat-1", to_origin=True) == {"Private-Token": "glpat-1"}
    assert outgoing_headers("Deploy-Token gldt-1", to_origin=True) == {"Deploy-Token": "gldt-1"}
    for credential in ("Basic abc", "Private-Token glpat-1", "Deploy-Token gldt-1", None):
        assert outgoing_headers(credential, to_origin=False) == {}
    assert credential_headers("Bearer t") == {"Authorization": "Bearer t"}


@pytest.mark.parametrize(
    ("status", "message", "refused"),
    [
        (401, "anything at all", True),
        (403, "403", True),
        (403, "403 Forbidden", True),
        (403, "insufficient_scope: read_api", True),
        (403, "Dependency Firewall blocked this package", False),
        (404, "404 Not Found", False),
        (500, "401", False),
    ],
)
def test_which_answers_refuse_the_credential_itself(
    status: int, message: str, refused: bool
) -> None:
    assert refuses_credentials(status, message) is refused


def test_a_refused_proxy_token_on_upload_is_the_operators_problem() -> None:
    error = own_upload_refused(401, "401 Unauthorized", is_client=False)
    assert isinstance(error, UpstreamError) and "check upstream.token" in error.message
    assert own_upload_refused(401, "401 Unauthorized", is_client=True) is None
    assert own_upload_refused(403, "protected package", is_client=False) is None


def test_a_client_reads_cached_pages_only_after_gitlabs_yes() -> None:
    assert page_trust(is_client=False, decided=False, shared=True).cached
    assert not page_trust(is_client=True, decided=False, shared=True).cached
    trusted = page_trust(is_client=True, decided=True, shared=True)
    assert trusted.cached and trusted.may_use_stored
    assert trusted.flight("k", "c") == "k"
    private = page_trust(is_client=True, decided=True, shared=False)
    assert not private.may_use_stored
    untrusted = page_trust(is_client=True, decided=False, shared=True)
    assert untrusted.flight("k", "c") == "k|c"
    assert untrusted.failing("k", "c") == "k|c" and untrusted.failing("k", None) == "k"


@pytest.mark.parametrize(
    ("status", "message", "redirected", "index", "verdict"),
    [
        (200, "", False, False, (200, "200 OK")),
        (302, "", True, False, (200, "200 OK")),
        (302, "", True, True, None),
        (404, "404 Not Found", False, False, None),
        (404, "404 Not Found", False, True, (404, "404 Not Found")),
        (401, "401 Unauthorized", False, False, (401, "401 Unauthorized")),
        (403, "blocked by policy", False, False, None),
        (503, "", False, False, None),
    ],
)
def test_what_a_page_answer_says_of_the_callers_credentials(
    status: int,
    message: str,
    redirected: bool,
    index: bool,
    verdict: tuple[int, str] | None,
) -> None:
    assert page_verdict(status, message, redirected=redirected, index=index) == verdict


def test_access_tokens_need_inject_mode(tmp_path: Path) -> None:
    assert tokens_file_conflict(settings(tmp_path)) is None
    assert tokens_file_conflict(settings(tmp_path, tokens_file="tokens")) is None
    conflict = tokens_file_conflict(
        settings(tmp_path, credentials="passthrough", tokens_file="tokens")
    )
    assert conflict is not None and "upstream.credentials = 'inject'" in conflict


def test_whom_reads_and_uploads_act_as(tmp_path: Path) -> None:
    upstream = settings(tmp_path).upstream
    inject = CredentialPolicy(upstream)
    own = inject.injected_authorization
    assert own is not None and own.startswith("Basic ")
    acting = inject.reads_as(lambda: pytest.fail("inject mode must not read the client's"))
    assert acting is not None and (acting.authorization, acting.as_client) == (own, False)
    passthrough = CredentialPolicy(dataclasses.replace(upstream, credentials="passthrough"))
    assert passthrough.reads_as(lambda: None) is None
    client = passthrough.reads_as(lambda: "Basic client")
    assert client is not None and (client.authorization, client.as_client) == ("Basic client", True)
    prefer = CredentialPolicy(dataclasses.replace(upstream, credentials="prefer-client"))
    anonymous = prefer.reads_as(lambda: None)
    assert anonymous is not None and (anonymous.authorization, anonymous.as_client) == (own, True)
    assert inject.uploads_as(lambda: None) is None


def test_uploads_through_access_tokens_need_the_proxys_credentials(tmp_path: Path) -> None:
    policy = CredentialPolicy(settings(tmp_path).upstream)
    guarded = AccessSettings(tokens_file="tokens")
    assert isinstance(policy.upload_refusal("Basic c", True, guarded), Forbidden)
    assert policy.upload_refusal("Basic c", False, guarded) is None
    assert isinstance(policy.upload_refusal(None, False, AccessSettings()), UpstreamError)


def test_credentials_never_follow_a_forwarded_file_off_the_origin(tmp_path: Path) -> None:
    policy = CredentialPolicy(settings(tmp_path).upstream)
    assert policy.forwarded_file_authorization("Basic c", on_origin=True) == "Basic c"
    assert policy.forwarded_file_authorization("Basic c", on_origin=False) is None
