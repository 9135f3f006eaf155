"""Central server endpoints and the box's credentials for them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.sync.central import (
    CentralCredentials,
    CentralError,
    Endpoint,
    load_credentials,
    parse_endpoint,
    save_credentials,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://relay.gin.go.th", Endpoint("smtp", "relay.gin.go.th", 587)),
        ("smtps://relay.gin.go.th:4465", Endpoint("smtps", "relay.gin.go.th", 4465)),
        ("imaps://127.0.0.1", Endpoint("imaps", "127.0.0.1", 993)),
        ("imap://[::1]:1143/", Endpoint("imap", "::1", 1143)),
    ],
)
def test_endpoints_parse_with_default_ports(url: str, expected: Endpoint) -> None:
    assert parse_endpoint(url, ("smtp", "smtps", "imap", "imaps")) == expected


def test_endpoint_prints_back_as_a_url() -> None:
    assert str(Endpoint("imap", "::1", 1143)) == "imap://[::1]:1143"
    assert Endpoint("smtps", "h", 465).implicit_tls
    assert not Endpoint("smtp", "h", 587).implicit_tls


@pytest.mark.parametrize(
    "url",
    [
        "http://relay.go.th",  # wrong scheme
        "smtp://",  # no host
        "smtp://relay.go.th:99999",  # port out of range
        "smtp://user:pw@relay.go.th",  # credentials never go in a URL
        "smtp://relay.go.th/path",
    ],
)
def test_malformed_endpoints_are_refused(url: str) -> None:
    with pytest.raises(CentralError):
        parse_endpoint(url, ("smtp", "smtps"))


def test_credentials_are_private_and_never_printed(tmp_path: Path) -> None:
    assert load_credentials(tmp_path) is None
    credentials = CentralCredentials("box-1@hub.go.th", "s3cret-value")
    save_credentials(tmp_path, credentials)
    assert load_credentials(tmp_path) == credentials
    mode = stat.S_IMODE((tmp_path / "central.json").stat().st_mode)
    assert mode == 0o600
    assert "s3cret-value" not in repr(credentials)
    assert "s3cret-value" not in str(credentials)
