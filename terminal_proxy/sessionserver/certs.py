"""A throw-away TLS identity for the session server, made fresh at every start.

Data flow: ``generate_identity(hosts)`` makes an EC P-256 key and a self-signed x509
certificate valid for about a day, whose subjectAltName covers 127.0.0.1, ::1, localhost
and the host the server listens on. The certificate is its own CA: its PEM is what a
gateway pins as ``CAPem``. ``server_context(identity)`` turns it into an
``ssl.SSLContext``; the private key only exists in memory, except for the instant
``load_cert_chain`` (which reads files only) needs it: it is then written, encrypted with
a one-time random password, into a private 0700 directory that is deleted right after.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_NAMES", "TlsIdentity", "generate_identity", "server_context"]

# Always in the certificate, whatever host the server listens on.
DEFAULT_NAMES: Final[tuple[str, ...]] = ("127.0.0.1", "::1", "localhost")
VALIDITY: Final = datetime.timedelta(days=1)
# Tolerate a client clock slightly behind ours.
_BACKDATE: Final = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class TlsIdentity:
    """A certificate (PEM, public) and its private key (never printed)."""

    cert_pem: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """subjectAltName entries: IP addresses as IPAddress, other names as DNSName.

    Wildcard listen addresses (``0.0.0.0``, ``::``) and empty names are skipped: no client
    dials them, and the defaults already cover loopback.
    """
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*DEFAULT_NAMES, *hosts):
        host = host.strip().strip("[]")
        if not host or host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names.append(x509.DNSName(host))
            continue
        if not address.is_unspecified:
            names.append(x509.IPAddress(address))
    return names


def generate_identity(hosts: Iterable[str] = ()) -> TlsIdentity:
    """A new key and self-signed certificate for ``DEFAULT_NAMES`` plus ``hosts``.

    The certificate carries CA basic constraints and keyCertSign (it is the trust anchor a
    client loads) as well as serverAuth (it is also the leaf the server presents), so
    OpenSSL, Go's crypto/x509 and strict-mode verification all accept it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "terminal-proxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, "terminal-proxy session server"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return TlsIdentity(cert_pem=pem, key=key)


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """A TLS server context presenting ``identity`` (TLS 1.2 or newer)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = secrets.token_bytes(32)
    encrypted_key = identity.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    # mkdtemp creates the directory with mode 0700; the file is 0600 and encrypted with a
    # password that only lives in this frame.
    directory = tempfile.mkdtemp(prefix="terminal-proxy-tls-")
    try:
        path = Path(directory) / "identity.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(identity.cert_pem.encode("ascii"))
            out.write(encrypted_key)
        context.load_cert_chain(path, password=password)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return context
