"""Bearer credentials: an API key (backend services) or a participant token (one participant).

On TLS channels the credential travels as gRPC call credentials, which gRPC refuses to send over
an insecure connection: a key cannot leak in clear text by mistake. On insecure channels (local
development, tests, a sidecar on loopback) gRPC would drop call credentials, so the channel
factories attach the same header with an interceptor instead; `connect()` only makes such a
channel for a loopback host unless the caller asks for `secure=False` explicitly.
"""

from __future__ import annotations

import ipaddress

import grpc

AUTHORIZATION = "authorization"


def bearer_token(api_key: str | None, participant_token: str | None) -> str | None:
    """The one credential to send. Its form is left to the server to judge, which answers a bad
    one with UNAUTHENTICATED and a reason; only a caller's contradiction is refused here."""
    if api_key and participant_token:
        raise ValueError("pass either api_key or participant_token, not both")
    token = api_key or participant_token
    if token is None:
        return None
    if not token.strip():
        raise ValueError("the credential is empty")
    return token


def authorization_header(token: str) -> tuple[str, str]:
    return (AUTHORIZATION, f"Bearer {token}")


def call_credentials(token: str) -> grpc.CallCredentials:
    # access_token_call_credentials sends exactly `authorization: Bearer <token>`.
    return grpc.access_token_call_credentials(token)


def target_host(target: str) -> str:
    """The host part of a gRPC target: `host:port`, `[v6]:port`, `dns:///host:port`, `ipv4:...`."""
    if target.startswith(("unix:", "unix-abstract:")):
        return "unix"
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            # dns:[//authority/]host:port
            if target.startswith("//"):
                target = target[2:].partition("/")[2]
            target = target.split(",")[0]  # ipv4:a:p,b:p lists several addresses
            break
    if target.startswith("["):
        return target[1:].partition("]")[0]
    if target.count(":") > 1:  # a bare IPv6 address without a port
        return target
    return target.rpartition(":")[0] if ":" in target else target


def is_local(target: str) -> bool:
    """Whether the target is this machine (loopback or a Unix socket), where TLS adds nothing."""
    host = target_host(target).lower()
    if host in ("unix", "localhost", "ip6-localhost") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
