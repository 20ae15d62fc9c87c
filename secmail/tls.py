"""
TLS for the SMTP server (STARTTLS) and the portal: certificates and settings.

Without a configured certificate the gateway makes a self-signed one in the data
directory on first start, so that it runs with TLS out of the box. Server
settings follow Mozilla's "intermediate" profile: TLS 1.2 and 1.3 only, forward
secret AEAD ciphers.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.ssl import Certificate, TLSVersion, trustRootFromCertificates

if TYPE_CHECKING:
    # Twisted documents this interface but does not export it from twisted.internet.ssl.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

# Mozilla intermediate (TLS 1.2 part; TLS 1.3 suites are fixed by OpenSSL).
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)


class CertificateError(Exception):
    """The certificate or key cannot be used; the message names the file."""


def ensure_self_signed(cert_path: str, key_path: str, hostname: str) -> bool:
    """Create a self-signed certificate for C{hostname} unless one exists. True when made."""
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return False
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return True


def server_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Server-side TLS settings for STARTTLS and the portal."""
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise CertificateError(f"{e.filename}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except Exception as e:
        raise CertificateError(
            f"{cert_path} / {key_path}: not a PEM certificate and key: {e}"
        ) from None
    leaf = crypto.X509.from_cryptography(certs[0])
    chain = [crypto.X509.from_cryptography(c) for c in certs[1:]]
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=leaf,
        extraCertChain=chain,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(INTERMEDIATE_CIPHERS),
    )


def trust_root_from_pem(ca_file: str) -> IOpenSSLTrustRoot:
    """
    Trust the CA certificates in the PEM file C{ca_file}, which may hold several. Raises
    L{CertificateError} naming the file when it cannot be read or holds no certificate.
    """
    try:
        with open(ca_file, "rb") as f:
            pem = f.read()
        found = x509.load_pem_x509_certificates(pem)
    except (OSError, ValueError) as e:
        raise CertificateError(f"cannot use CA file {ca_file!r}: {e}") from None
    certificates = [Certificate(crypto.X509.from_cryptography(c)) for c in found]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)
    return root
