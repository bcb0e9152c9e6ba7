"""Where notifications may go: https URLs whose names resolve only to public addresses.

Checked when an endpoint is created or changed, and again before every delivery, because a
name can be re-pointed. The sender then connects to the very address checked here (never
resolving the name a second time), so a name that flips between a public and a private
address between check and connect (DNS rebinding) cannot reach a private one.

`allow_private` (NOTIFY_ALLOW_PRIVATE, for the local run and the tests) lifts both rules:
plain http, and loopback or private addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
# IPv6 prefixes that carry an IPv4 address which a gateway may forward to (NAT64).
NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[..., list]
ALLOW_PRIVATE_WARNING = ("!!! NOTIFY_ALLOW_PRIVATE is on: notifications may go over plain http and to loopback and "
                         "private addresses. Never do this in production. !!!")


class UnsafeUrl(ValueError):
    """An endpoint URL notifications must not be sent to; the message says why."""


def check_url(url: str, allow_private: bool = False) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable endpoint URL, without resolving it."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"is not a valid URL ({exc})") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeUrl("must be an https:// URL")
    if not parts.hostname:
        raise UnsafeUrl("has no host")
    if parts.username is not None or parts.password is not None:
        # It would be stored, shown by the API and logged like any URL.
        raise UnsafeUrl("must not carry credentials (user:password@)")
    if parts.fragment:
        raise UnsafeUrl("must not have a fragment (#)")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeUrl("must not contain spaces or control characters")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def is_public(address: str) -> bool:
    """A globally routable unicast address: not loopback, private, link-local, CGNAT (shared
    address space), cloud metadata (169.254.169.254, fd00:ec2::254), multicast or reserved,
    nor an IPv6 address that embeds such an IPv4 address (mapped, 6to4, NAT64, Teredo)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope id (fe80::1%eth0) is link-local anyway
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(is_public(str(v4)) for v4 in embedded if v4 is not None)
    return True


def resolve(host: str, port: int, allow_private: bool = False,
            resolver: Resolver = socket.getaddrinfo) -> list[str]:
    """Every address `host` resolves to, all of them checked: one private address among
    public ones refuses the name (the client could be handed either)."""
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise UnsafeUrl(f"host {host!r} does not resolve")
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise UnsafeUrl(f"host {host!r} resolves to a non-public address ({', '.join(refused)})")
    return addresses


def check_endpoint(url: str, allow_private: bool = False, resolver: Resolver = socket.getaddrinfo) -> None:
    """The check at creation: the URL's form, then (unless allowed anyway) its addresses."""
    _, host, port = check_url(url, allow_private)
    if not allow_private:
        resolve(host, port, allow_private, resolver)
