"""log.redact: URL userinfo is blanked whatever the user part, an empty one included."""

from __future__ import annotations

import pytest

from proxy.log import REDACTED, redact


@pytest.mark.parametrize(
    ("text", "blanked"),
    [
        ("redis://:s3cret-pass@redis:6379/0", f"redis://:{REDACTED}@redis:6379/0"),
        ("redis://proxy:s3cret-pass@redis/0", f"redis://proxy:{REDACTED}@redis/0"),
        (
            "see https://u:s3cret-pass@gitlab.example.com/x",
            f"see https://u:{REDACTED}@gitlab.example.com/x",
        ),
    ],
)
def test_a_password_in_a_url_is_blanked(text: str, blanked: str) -> None:
    assert redact(text) == blanked


def test_a_port_is_not_taken_for_a_password() -> None:
    assert redact("redis://redis:6379/0 and https://gitlab:443/") == (
        "redis://redis:6379/0 and https://gitlab:443/"
    )
