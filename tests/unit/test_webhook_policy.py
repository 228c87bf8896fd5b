"""The webhook signature against an independent implementation, and the per-batch URL policy."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from msgbatch.webhooks import matching_prefix, parse_prefix, parse_secret, refused_address, shown_url, signature

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_the_signature_is_the_standard_webhooks_one() -> None:
    body = b'{"type":"message_batch.ended","data":{"id":"msgbatch_1"}}'
    stamp = 1_700_000_000
    ours = signature(parse_secret(SECRET), "msg_1", stamp, body)
    theirs = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    assert ours == theirs


@pytest.mark.parametrize("bad", ["whsec_", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()])
def test_unusable_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"whsec_|too short"):
        parse_secret(bad)


PREFIXES = ["https://hooks.example.com/batches/", "http://10.0.0.5:9000", "http://localhost:8080/h"]


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("https://hooks.example.com/batches/42", PREFIXES[0]),
        ("https://HOOKS.example.com:443/batches/", PREFIXES[0]),
        ("https://hooks.example.com/batches", None),  # above the prefix's folder
        ("https://hooks.example.com/batches-other/1", None),
        ("https://hooks.example.com.evil.net/batches/1", None),
        ("https://hooks.example.com@evil.net/batches/1", None),
        ("http://hooks.example.com/batches/1", None),  # another scheme
        ("https://hooks.example.com:8443/batches/1", None),  # another port
        ("https://hooks.example.com/batches/../admin", None),
        ("https://hooks.example.com/batches/%2e%2e/admin", None),
        ("http://10.0.0.5:9000/anything", PREFIXES[1]),
        ("http://10.0.0.55:9000/", None),
        ("http://localhost:8080/h", PREFIXES[2]),
        ("http://localhost:8080/h/x", PREFIXES[2]),
        ("http://localhost:8080/hx", None),
    ],
)
def test_a_url_matches_a_prefix_by_scheme_host_port_and_folder(url: str, prefix: str | None) -> None:
    found = matching_prefix(url, PREFIXES)
    assert (found.text if found else None) == prefix


@pytest.mark.parametrize(
    ("address", "prefix", "refused"),
    [
        ("93.184.216.34", "https://hooks.example.com/", None),
        ("2606:2800:220:1::1", "https://hooks.example.com/", None),
        ("127.0.0.1", "https://hooks.example.com/", "loopback"),
        ("::1", "https://hooks.example.com/", "loopback"),
        ("::ffff:127.0.0.1", "https://hooks.example.com/", "loopback"),
        ("169.254.169.254", "https://hooks.example.com/", "link-local"),
        ("fe80::1", "https://hooks.example.com/", "link-local"),
        ("10.1.2.3", "https://hooks.example.com/", "private"),
        ("192.168.1.1", "https://hooks.example.com/", "private"),
        ("fd00::1", "https://hooks.example.com/", "private"),
        ("100.64.0.1", "https://hooks.example.com/", "non-public"),
        ("0.0.0.0", "https://hooks.example.com/", "unspecified"),
        ("224.0.0.1", "https://hooks.example.com/", "multicast"),
        # The allow-list names the address itself: the operator said so.
        ("10.0.0.5", "http://10.0.0.5:9000/", None),
        ("127.0.0.1", "http://localhost:8080/", None),
        ("::1", "http://localhost:8080/", None),
        ("10.0.0.6", "http://localhost:8080/", "private"),
    ],
)
def test_private_addresses_are_refused_unless_named(address: str, prefix: str, refused: str | None) -> None:
    why = refused_address(address, parse_prefix(prefix))
    if refused is None:
        assert why is None
    else:
        assert why is not None and f"a {refused} address" in why


def test_urls_are_shown_without_credentials_or_query() -> None:
    assert shown_url("https://u:p@hooks.example.com:8443/a/b?token=x#f") == "https://hooks.example.com:8443/a/b"
