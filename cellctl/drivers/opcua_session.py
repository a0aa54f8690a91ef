"""Opening an OPC UA session as a device's config says (security, trusted certificates, user) and resolving
node references against the server; shared by the OPC UA driver and ``cellctl browse``.

The server's certificate is checked by asyncua's own ``CertificateValidator`` over a ``TrustStore`` loaded
from the device's trust folder at every connect (so a certificate copied there is picked up without a
restart); a certificate that is not trusted stops the connect before any credential is sent. Failures are
CommErrors; those that retrying alone will not fix (a refused certificate or user, a security setting the
server does not offer, cellctl's own certificate or key unreadable) are the subclass SessionRefused, with a
message saying what to do.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cellctl.errors import CommError
from cellctl.schema.cell import DeviceConfig, SecurityMode, SecurityPolicy
from cellctl.schema.noderef import BrowsePathRef, NodeIdRef, NodeRef

__all__ = [
    "SESSION_TIMEOUT_S",
    "SessionRefused",
    "SessionSettings",
    "close_session",
    "open_session",
    "resolve_refs",
]

K = TypeVar("K", bound=Hashable)

SESSION_TIMEOUT_S = 30.0
"""Session timeout asked of the server. Every reconnect opens a fresh session and the old one lingers on the
server until it times out; PLCs allow few sessions, so it must not linger for asyncua's default hour."""
CLOSE_TIMEOUT_S = 1.0
"""How long an orderly session close may take before the socket is just dropped."""
CLIENT_APPLICATION_URI = "urn:cellctl:client"
"""Application URI cellctl announces when its certificate names none (it should: servers check it)."""

COMM_ERRORS = (OSError, TimeoutError, UaError)
"""What asyncua raises when the link or the session fails (ConnectionError is an OSError)."""

SERVER_CERTIFICATE_CHECKS = (
    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER
)
"""asyncua's full check of a server certificate: validity dates, application URI, key usage, server
authentication, trusted (itself or its CA in the trust folder) and not revoked."""

_POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES: dict[SecurityMode, ua.MessageSecurityMode] = {
    SecurityMode.NONE: ua.MessageSecurityMode.None_,
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
_CERTIFICATE_HINTS: dict[str, str] = {
    "BadCertificateUntrusted": "neither it nor its CA is in the trust folder {trust_dir}; if it is the "
    "server's, copy it there",
    "BadCertificateTimeInvalid": "it has expired or is not valid yet",
    "BadCertificateUriInvalid": "it does not name the server's application URI {uri!r}",
    "BadCertificateUseNotAllowed": "its key usage does not allow an OPC UA server to use it",
    "BadCertificateRevoked": "it is revoked",
    "BadCertificateInvalid": "it lacks the extensions an OPC UA certificate needs",
}
_RELATIVE_PATH_RESERVED = "/.<>:#!&"
"""Characters a name in OPC UA's RelativePath text escapes with '&' (Part 4 A.2)."""
_USER_REFUSALS = frozenset({"BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected"})
_SECURITY_REFUSALS = frozenset(
    {"BadSecurityChecksFailed", "BadSecurityPolicyRejected", "BadSecurityModeRejected", "BadNonceInvalid"}
)


class SessionRefused(CommError):
    """A session could not be opened and retrying alone will not fix it: the server refused it (certificate,
    user, security), or cellctl's own certificate, key or trust folder cannot be used."""


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Everything needed to open a session with one server, paths resolved."""

    name: str
    """Who errors name: the device, or the endpoint for ``cellctl browse``."""
    endpoint: str
    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.NONE
    certificate: Path | None = None
    private_key: Path | None = None
    trust_dir: Path | None = None
    username: str | None = None
    password: str | None = None
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 2.0

    @classmethod
    def of(
        cls, name: str, device: DeviceConfig, resolve_path: Callable[[str], Path] = Path
    ) -> SessionSettings:
        """The settings of a configured device; its paths taken through ``resolve_path`` (the cell file's
        ``LoadedConfig.resolve``; plain ``Path``, i.e. the working folder, by default)."""
        security = device.security
        connect_s, request_s = device.timeouts.connect_s, device.timeouts.request_s
        if security is None:
            return cls(name, device.endpoint, connect_timeout_s=connect_s, request_timeout_s=request_s)

        def path(value: str | None) -> Path | None:
            return None if value is None else resolve_path(value)

        return cls(
            name,
            device.endpoint,
            policy=security.policy,
            mode=security.message_mode,
            certificate=path(security.certificate),
            private_key=path(security.private_key),
            trust_dir=path(security.trust_dir),
            username=security.username,
            password=security.password,
            connect_timeout_s=connect_s,
            request_timeout_s=request_s,
        )


# ------------------------------------------------------------------------------------------------ connect


async def open_session(settings: SessionSettings) -> Client:
    """A Client with a fresh, activated session; CommError when the server cannot be reached in time,
    SessionRefused when it (or our side's security setup) refuses. Close it with :func:`close_session`."""
    client = Client(settings.endpoint, timeout=settings.request_timeout_s)
    client.session_timeout = round(SESSION_TIMEOUT_S * 1000)
    where = settings.endpoint
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            if settings.policy is not SecurityPolicy.NONE:
                await _secure(client, settings)
            if settings.username is not None and settings.password is not None:
                client.set_user(settings.username)
                client.set_password(settings.password)
            try:
                await client.connect()
            except UaError as exc:
                # asyncua's words when the server lacks the endpoint asked for (here: security None).
                if "No matching endpoints" not in str(exc):
                    raise
                client.disconnect_socket()
                raise _not_offered(settings, await client.connect_and_get_server_endpoints()) from exc
    except TimeoutError:
        client.disconnect_socket()  # a connect cut short by our timeout may have left the socket open
        raise CommError(
            settings.name, f"connect to {where} timed out after {settings.connect_timeout_s:g} s"
        ) from None
    except UaStatusCodeError as exc:
        client.disconnect_socket()
        raise _refusal(settings, exc) from exc
    except COMM_ERRORS as exc:
        client.disconnect_socket()
        raise CommError(settings.name, f"connect to {where} failed: {describe(exc)}") from exc
    except BaseException:
        client.disconnect_socket()
        raise
    return client


async def close_session(client: Client) -> None:
    """Close the session in an orderly way if the server answers quickly, else just drop the socket."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await client.disconnect()
    except COMM_ERRORS:
        # The server may be gone already; the socket still has to go.
        client.disconnect_socket()


def describe(exc: BaseException) -> str:
    """A library or OS error in a few words: 'connection refused', 'BadTimeout', ..."""
    if isinstance(exc, UaStatusCodeError):
        return _status_name(exc.code)
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's own text names the address, given already
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return repr(exc)


async def _secure(client: Client, settings: SessionSettings) -> None:
    """Load our certificate and key and the trust store, find the server's endpoint for the configured policy
    and mode, and set asyncua's security with a validator for the server's certificate."""
    assert settings.certificate is not None and settings.private_key is not None
    assert settings.trust_dir is not None  # OpcUaSecurity requires all three with a policy
    validator = CertificateValidator(SERVER_CERTIFICATE_CHECKS, await _trust_store(settings))
    try:
        own = await uacrypto.load_certificate(settings.certificate)
    except (OSError, ValueError) as exc:
        raise SessionRefused(
            settings.name, f"cannot use certificate {settings.certificate}: {describe(exc)}"
        ) from exc
    client.application_uri = _application_uri(own) or CLIENT_APPLICATION_URI
    policy = _POLICIES[settings.policy]
    mode = _MODES[settings.mode]
    endpoints = await client.connect_and_get_server_endpoints()
    endpoint = next(
        (e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode), None
    )
    if endpoint is None:
        raise _not_offered(settings, endpoints)
    # A server may send its certificate followed by its chain; asyncua keeps the first.
    server_certificate = uacrypto.x509_from_der(endpoint.ServerCertificate)  # type: ignore[no-untyped-call]
    if server_certificate is None:
        raise SessionRefused(settings.name, "the server's endpoint carries no certificate")
    try:
        await client.set_security(
            policy,
            certificate=str(settings.certificate),
            private_key=str(settings.private_key),
            server_certificate=server_certificate.public_bytes(Encoding.DER),
            mode=mode,
        )
    except (OSError, ValueError, TypeError) as exc:
        raise SessionRefused(
            settings.name, f"cannot use private key {settings.private_key}: {describe(exc)}"
        ) from exc
    client.certificate_validator = _ServerCertificateCheck(settings, validator)


async def _trust_store(settings: SessionSettings) -> TrustStore:
    trust_dir = settings.trust_dir
    assert trust_dir is not None
    if not trust_dir.is_dir():
        raise SessionRefused(settings.name, f"trust folder {trust_dir} does not exist")
    store = TrustStore([trust_dir], [])
    try:
        await store.load_trust()
    except ValueError as exc:
        # cryptography refuses an empty store; a folder of unreadable files says so too.
        reason = "holds no certificate (.der or .pem)" if "empty" in str(exc) else f"is unusable: {exc}"
        raise SessionRefused(
            settings.name, f"trust folder {trust_dir} {reason}: every server would be refused"
        ) from exc
    except OSError as exc:
        raise SessionRefused(settings.name, f"cannot read trust folder {trust_dir}: {describe(exc)}") from exc
    return store


class _ServerCertificateCheck:
    """The certificate validator handed to asyncua: its CertificateValidator, with a refusal that names the
    device, the certificate's subject and what to do."""

    def __init__(self, settings: SessionSettings, validator: CertificateValidator) -> None:
        self._settings = settings
        self._validator = validator

    async def __call__(self, certificate: x509.Certificate, server: ua.ApplicationDescription) -> None:
        try:
            await self._validator.validate(certificate, server)
        except ServiceError as exc:
            status = _status_name(exc.code)
            hint = _CERTIFICATE_HINTS.get(status, "it failed the certificate checks").format(
                trust_dir=self._settings.trust_dir, uri=server.ApplicationUri
            )
            raise SessionRefused(
                self._settings.name,
                f"server certificate {certificate.subject.rfc4514_string()!r} refused ({status}): {hint}",
            ) from exc


def _refusal(settings: SessionSettings, exc: UaStatusCodeError) -> CommError:
    """The error for a Bad status answered while connecting."""
    status = _status_name(exc.code)
    if status in _USER_REFUSALS:
        who = f"user {settings.username!r}" if settings.username else "anonymous access"
        fix = "check username and password" if settings.username else "configure a username and password"
        return SessionRefused(settings.name, f"the server refused {who} ({status}): {fix}")
    if status.startswith("BadCertificate"):
        return SessionRefused(
            settings.name,
            f"the server refused cellctl's certificate {settings.certificate} ({status}): add it to the "
            "server's trusted certificates",
        )
    if status in _SECURITY_REFUSALS:
        return SessionRefused(
            settings.name,
            f"the server refused a session with security {settings.policy.value}/{settings.mode.value} "
            f"({status})",
        )
    return CommError(settings.name, f"connect to {settings.endpoint} failed: {status}")


def _not_offered(settings: SessionSettings, endpoints: list[ua.EndpointDescription]) -> SessionRefused:
    offered = ", ".join(sorted({_endpoint_security(e) for e in endpoints})) or "nothing"
    return SessionRefused(
        settings.name,
        f"the server offers no endpoint with {settings.policy.value}/{settings.mode.value} "
        f"(it offers: {offered})",
    )


def _status_name(code: int) -> str:
    return ua.StatusCode(ua.UInt32(code)).name


def _endpoint_security(endpoint: ua.EndpointDescription) -> str:
    policy = str(endpoint.SecurityPolicyUri).rpartition("#")[2]
    mode = ua.MessageSecurityMode(endpoint.SecurityMode).name.rstrip("_")
    return f"{policy}/{mode}"


def _application_uri(certificate: x509.Certificate) -> str | None:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


# ---------------------------------------------------------------------------------------------- addressing


async def resolve_refs(client: Client, refs: Mapping[K, NodeRef]) -> tuple[dict[K, ua.NodeId], dict[K, str]]:
    """NodeIds of ``refs`` on this server, and for those that do not resolve, why (by the same keys).

    Namespace URIs are looked up in the server's NamespaceArray (read once); every browse path is translated
    in one request. Raises what asyncua raises when the link fails.
    """
    resolved: dict[K, ua.NodeId] = {}
    failed: dict[K, str] = {}
    uses_uri = any(_namespace_uris(ref) for ref in refs.values())
    namespaces: list[str] = list(await client.get_namespace_array()) if uses_uri else []

    def index_of(namespace: int | str) -> int:
        if isinstance(namespace, int):
            return namespace
        try:
            return namespaces.index(namespace)
        except ValueError:
            raise _Unresolved(f"namespace {namespace!r} is not in the server's NamespaceArray") from None

    paths: dict[K, ua.RelativePath] = {}
    for key, ref in refs.items():
        try:
            if isinstance(ref, NodeIdRef):
                resolved[key] = ua.NodeId.from_string(f"ns={index_of(ref.namespace)};{ref.identifier}")
            else:
                paths[key] = _relative_path(ref, index_of)
        except _Unresolved as exc:
            failed[key] = f"cannot resolve {str(ref)!r}: {exc}"
    if paths:
        objects = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
        results = await client.translate_browsepaths(objects, list(paths.values()))
        for key, result in zip(paths, results, strict=True):
            ref = refs[key]
            if not result.StatusCode.is_good():
                failed[key] = f"cannot resolve {str(ref)!r}: no such node ({result.StatusCode.name})"
            elif len(result.Targets) != 1:
                failed[key] = f"cannot resolve {str(ref)!r}: it names {len(result.Targets)} nodes, not one"
            else:
                target = result.Targets[0].TargetId
                resolved[key] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
    return resolved, failed


class _Unresolved(Exception):
    """A reference names a namespace the server does not have."""


def _namespace_uris(ref: NodeRef) -> list[str]:
    if isinstance(ref, NodeIdRef):
        return [ref.namespace] if isinstance(ref.namespace, str) else []
    return [s.namespace for s in ref.segments if isinstance(s.namespace, str)]


def _relative_path(ref: BrowsePathRef, index_of: Callable[[int | str], int]) -> ua.RelativePath:
    """The browse path in OPC UA's RelativePath text (Part 4 A.2: '/' follows any hierarchical reference),
    parsed by asyncua."""
    text = "".join(f"/{index_of(s.namespace)}:{_escape_relative(s.name)}" for s in ref.segments)
    return ua.RelativePath.from_string(text)


def _escape_relative(name: str) -> str:
    return "".join("&" + c if c in _RELATIVE_PATH_RESERVED else c for c in name)
