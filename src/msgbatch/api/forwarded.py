"""Where a client reached this server: the origin that `results_url` is built on.

The SDK sends its API key to whatever host `results_url` names, so that URL must never follow a
header an arbitrary client chose:

- `public_url`, when configured, is the origin, whatever the request says.
- Otherwise the origin is the request's `Host` (the address the client itself connected to), and
  `X-Forwarded-Host`, `-Proto` and `-Prefix` replace its parts only when the peer is one of
  `forwarded_allow_ips` (loopback by default, as uvicorn's own setting). Of a header with several
  values the last one counts: it is the one the nearest proxy added, the only one it vouches for.
- A scheme other than `http`/`https`, a host that is not a host name, an IP address or `[IPv6]`
  (with an optional port), a prefix that is not a plain path: `400 invalid_request_error`.
- With `allowed_hosts` set, a request whose host (after a trusted proxy's `X-Forwarded-Host`) is
  not in the list is refused with `400` on every path, so no response can name another host.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import Scope

from msgbatch.config import ConfigError, Settings
from msgbatch.errors import InvalidRequestError

# A DNS name (underscores allowed: container names have them), an IPv4 address, or [IPv6]; a port.
_HOST = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?", re.ASCII)
# A path of RFC 3986 segment characters.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*", re.ASCII)
_SCHEMES = ("http", "https")
_FORWARDED = (b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-prefix")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    prefix: str = ""

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.prefix}"


def _last(value: bytes) -> str:
    return value.decode("latin-1").rsplit(",", 1)[-1].strip()


def _hostname(host: str) -> str:
    """The name part of `host[:port]`, lower case (`[::1]:80` -> `[::1]`)."""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.partition(":")[0].rstrip(".").lower()


def _valid_host(host: str, header: str) -> str:
    if len(host) > 255 or not _HOST.fullmatch(host):
        raise InvalidRequestError(f"{header} header is not a valid host: {host[:100]!r}")
    return host


class ProxyPolicy:
    """Which peers' `X-Forwarded-*` headers count, and which hosts this server answers as."""

    def __init__(self, *, forwarded_allow_ips: Sequence[str], allowed_hosts: Sequence[str], public_url: str) -> None:
        self.trust_all = False
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in forwarded_allow_ips):
            if item == "*":
                self.trust_all = True
            elif item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    problem = f"{item!r} is not an IP address or network"
                    raise ConfigError(problem, key="forwarded_allow_ips") from None
        self.networks = tuple(networks)
        self.allowed_hosts = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        for pattern in self.allowed_hosts:
            name = pattern.removeprefix("*.")
            # A port, or not a host name at all.
            if pattern != "*" and (_hostname(name) != name.rstrip(".") or not _HOST.fullmatch(name)):
                problem = f"{pattern!r} is not a host name (without a port), *.domain or *"
                raise ConfigError(problem, key="allowed_hosts")
        self.public = None
        if public_url:
            scheme, sep, rest = public_url.rstrip("/").partition("://")
            host, _, path = rest.partition("/")
            if not sep or scheme not in _SCHEMES or not _HOST.fullmatch(host):
                problem = f"expected http(s)://host[:port][/prefix], got {public_url!r}"
                raise ConfigError(problem, key="public_url")
            self.public = Origin(scheme, host, "/" + path if path else "")
        self.trusts = functools.lru_cache(maxsize=4096)(self._trusts)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyPolicy:
        return cls(
            forwarded_allow_ips=settings.forwarded_allow_ips,
            allowed_hosts=settings.allowed_hosts,
            public_url=settings.public_url,
        )

    def _trusts(self, peer: str) -> bool:
        if self.trust_all:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        name = _hostname(host)
        for pattern in self.allowed_hosts:
            if pattern == "*" or pattern == name:
                return True
            if pattern.startswith("*.") and name.endswith(pattern[1:]):
                return True
        return False

    def origin(self, scope: Scope) -> Origin:
        """The origin this request reached; raises `InvalidRequestError` for what cannot be used."""
        host_value = None
        forwarded: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name == b"host":
                if host_value is not None:  # which one did the client mean? (RFC 9112: answer 400)
                    raise InvalidRequestError("The request has more than one Host header.")
                host_value = value
            elif name in _FORWARDED:
                forwarded[name] = value
        if host_value is not None:
            host = _valid_host(host_value.decode("latin-1"), "Host")
        else:  # HTTP/1.0 without Host: the address the connection came to
            server = scope.get("server") or ("localhost", None)
            address = f"[{server[0]}]" if ":" in server[0] else server[0]
            host = address if server[1] is None else f"{address}:{server[1]}"
        scheme: str = scope.get("scheme", "http")
        prefix = ""
        client = scope.get("client")
        if forwarded and client and self.trusts(client[0]):
            if b"x-forwarded-proto" in forwarded:
                scheme = _last(forwarded[b"x-forwarded-proto"]).lower()
                if scheme not in _SCHEMES:
                    raise InvalidRequestError(f"X-Forwarded-Proto header must be http or https, not {scheme[:20]!r}")
            if b"x-forwarded-host" in forwarded:
                host = _valid_host(_last(forwarded[b"x-forwarded-host"]), "X-Forwarded-Host")
            if b"x-forwarded-prefix" in forwarded:
                prefix = _last(forwarded[b"x-forwarded-prefix"]).rstrip("/")
                if not _PREFIX.fullmatch(prefix) or "/../" in prefix + "/" or "/./" in prefix + "/":
                    raise InvalidRequestError(f"X-Forwarded-Prefix header is not a plain path: {prefix[:100]!r}")
        if not self.host_allowed(host):
            raise InvalidRequestError(f"Host {_hostname(host)[:100]!r} is not one this server answers as.")
        if self.public is not None:
            return self.public
        return Origin(scheme, host, prefix)
