"""The lab's TLS certificate: self-signed at start, or the operator's ``--cert/--key``.

The generated certificate is its own CA (``CA:TRUE``), valid for
``127.0.0.1``, ``localhost`` and the host the lab listens on, so the file
itself is what a client trusts (``ca_file``): TLS stays verified, no
insecure flag needed.  The key never leaves the lab's temporary directory
(mode 0600), which is removed when the lab closes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from softphone.errors import ConfigurationError
from softphone.log import get_logger

log = get_logger(__name__)

VALIDITY_DAYS = 30


@dataclass
class LabCertificate:
    """PEM files of the lab's certificate and key; ``ca_file`` is what clients trust."""

    cert_file: Path
    key_file: Path
    generated: bool
    _tmpdir: Path | None = field(default=None, repr=False)

    @property
    def ca_file(self) -> Path:
        """A self-signed certificate is its own CA; for given files, the certificate (chain) file."""
        return self.cert_file

    def spki_pin(self) -> str:
        """Base64 SHA-256 of the certificate's public key: Chromium's
        ``--ignore-certificate-errors-spki-list`` value, which trusts this key and nothing else."""
        import base64
        import hashlib

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cert/key {self.cert_file} / {self.key_file} cannot be loaded: {exc}") from exc
        return ctx

    def cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _san_entries(hosts: list[str]) -> list:
    from cryptography import x509

    entries: list = []
    seen: set[str] = set()
    for host in ["127.0.0.1", "localhost", *hosts]:
        host = host.strip("[]")
        if not host or host in seen or host in ("0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def generate_certificate(directory: Path, hosts: list[str] | None = None,
                         common_name: str = "softphone lab") -> tuple[Path, Path]:
    """Write ``lab-cert.pem`` and ``lab-key.pem`` (EC P-256, self-signed CA) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts or [])), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "lab-cert.pem", directory / "lab-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_file, key_file


def lab_certificate(cert: str | Path | None = None, key: str | Path | None = None,
                    hosts: list[str] | None = None) -> LabCertificate:
    """The operator's files when given (both or neither), else a fresh self-signed pair in a temp dir."""
    if (cert is None) != (key is None):
        raise ConfigurationError("--cert and --key go together: give both or neither")
    if cert is not None and key is not None:
        for what, path in (("cert", cert), ("key", key)):
            if not Path(path).is_file():
                raise ConfigurationError(f"--{what} {path}: no such file")
        certificate = LabCertificate(Path(cert), Path(key), generated=False)
        certificate.server_context()  # a bad pair fails now, naming the files
        return certificate
    tmp = Path(tempfile.mkdtemp(prefix="softphone-lab-tls-"))
    cert_file, key_file = generate_certificate(tmp, hosts)
    log.debug("generated a self-signed certificate in %s", tmp)
    return LabCertificate(cert_file, key_file, generated=True, _tmpdir=tmp)
