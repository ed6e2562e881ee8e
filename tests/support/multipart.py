"""Hand-made multipart/form-data bodies for upload tests."""

from __future__ import annotations


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "xyz") -> bytes:
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


GOOD = multipart(
    ("name", None, b"corp-util"),
    ("version", None, b"1.0.0"),
    ("content", "corp_util-1.0.0.tar.gz", b"\x1f\x8b" + b"z" * 500),
)


GOOD_TYPE = "multipart/form-data; boundary=xyz"
