"""Which backend URLs the gateway may call, and how a URL is shown.

A backend URL is where the gateway sends prompts and, for the admin API, a way to make the gateway call any
address it can reach (server-side request forgery). So a backend must be http(s), and neither a link-local or
cloud metadata address (instance credentials live there) nor the gateway's own listener (a routing loop).
Literal addresses and well-known names are checked everywhere, synchronously; the admin API also resolves a
name (without blocking the loop) and checks every address it resolves to. A name that resolves elsewhere later
(DNS rebinding) is beyond what a check at configuration time can see; the hop header bounds the loops.

Credentials in a URL (`http://user:pass@host`) are accepted and sent upstream as HTTP basic auth; wherever a
URL is shown (admin API, audit log, errors, logs, metrics labels) it goes through `redact` first.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Iterable

from yarl import URL

from ricardo.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ... (also link-local)
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("168.63.129.16"),  # Azure's WireServer (the VM agent's channel: goal state, extensions)
}
METADATA_NAMES = {"metadata.google.internal", "metadata.goog", "instance-data.ec2.internal"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
RESOLVE_TIMEOUT_S = 2.0

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:]*)(?P<password>:[^\s/@]*)?@")


class UnsafeURL(InvalidInput):
    """A backend URL the gateway refuses to call."""

    status = 422


def redact(text: str) -> str:
    """`text` (a URL, or a message with URLs in it) with every URL's password replaced by `***`; a user without
    a password is often a token itself (`https://TOKEN@host`), so it goes too."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["password"] else f"{m['scheme']}***@", text)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its user and password, and (user, password) if it had any (percent-decoded)."""
    parsed = URL(url)
    if parsed.user is None and parsed.password is None:
        return url, None
    return str(parsed.with_user(None)), (parsed.user or "", parsed.password or "")


def _address(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:169.254.169.254 reaches 169.254.169.254
    return address


def _name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def address_problem(address: IPAddress) -> str | None:
    """What is wrong with calling `address`, or None."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "link-local"
    return None


def check_backend_url(url: str) -> None:
    """Refuse a URL that is not http(s) or names a link-local or metadata host. No name is resolved."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL(f"backend {redact(url)}: only http and https are allowed")
    host = parsed.host or ""
    if not host:
        raise UnsafeURL(f"backend {redact(url)}: no host")
    if _name(host) in METADATA_NAMES:
        raise UnsafeURL(f"backend {redact(url)}: {_name(host)} is a cloud metadata host")
    address = _address(host)
    problem = address_problem(address) if address is not None else None
    if problem:
        raise UnsafeURL(f"backend {redact(url)}: {address} is {problem}")


@functools.cache
def _own_addresses() -> frozenset[IPAddress]:
    """This machine's addresses that a name lookup can tell without the network (its hostname's)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return frozenset()
    return frozenset(a for info in infos if (a := _address(str(info[4][0]))) is not None)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address) is this machine's loopback."""
    name = _name(host)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


class Listener:
    """Where this gateway listens: a backend there would be the gateway itself."""

    def __init__(self, host: str, port: int):
        self.port = port
        self.wildcard = host in ("", "0.0.0.0", "::")
        address = _address(host)
        if address is not None:
            self.addresses: frozenset[IPAddress] = frozenset({address})
        elif is_loopback(host):
            self.addresses = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
        else:  # a name: resolved once, at start (a listener's own name is in /etc/hosts or the resolver's cache)
            try:
                infos = socket.getaddrinfo(host, port)
            except OSError:
                infos = []
            self.addresses = frozenset(a for info in infos if (a := _address(str(info[4][0]))) is not None)

    def is_self(self, port: int, addresses: Iterable[IPAddress]) -> bool:
        if port != self.port:
            return False
        for address in addresses:
            if address.is_unspecified or address in self.addresses:  # connecting to 0.0.0.0 reaches this host
                return True
            if self.wildcard and (address.is_loopback or address in _own_addresses()):
                return True
        return False

    def check(self, url: str, resolved: Iterable[IPAddress] = ()) -> None:
        """Refuse `url` if it points at this listener (by literal address, loopback name or `resolved`)."""
        parsed = URL(url)
        host = parsed.host or ""
        address = _address(host)
        addresses = set(resolved)
        if address is not None:
            addresses.add(address)
        elif is_loopback(host):
            addresses |= {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
        if self.is_self(parsed.port or 0, addresses):
            raise UnsafeURL(f"backend {redact(url)} is this gateway's own address: it would route to itself")


async def resolve(url: str) -> list[IPAddress]:
    """The addresses the URL's host resolves to, without blocking the loop; [] if it does not resolve in time
    (the backend is then simply unhealthy until it does)."""
    host = URL(url).host or ""
    if _address(host) is not None:
        return []
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await asyncio.get_running_loop().getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return []
    return [a for info in infos if (a := _address(str(info[4][0]))) is not None]


async def check_resolved(url: str, listener: Listener) -> None:
    """The admin API's check: the static rules, then every address the name resolves to."""
    check_backend_url(url)
    addresses = await resolve(url)
    for address in addresses:
        problem = address_problem(address)
        if problem:
            raise UnsafeURL(f"backend {redact(url)}: its host resolves to {address}, which is {problem}")
    listener.check(url, addresses)
