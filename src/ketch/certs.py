"""TLS certificates for remote access: made with ``cryptography``, compared by fingerprint.

ketchd's server certificate and each client's certificate are self-signed
(EC P-256, ten years, as Multipass's); trust is by fingerprint, never by a
certificate authority: the client pins the server's fingerprint on first
contact (:mod:`ketch.remote`), ketchd trusts the client certificates that
enrolled with the passphrase (:mod:`ketch.daemon.auth`).  Private keys are
written 0600, through a temporary file renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import ssl

VALID_DAYS = 3650


def make_pair(common_name: str) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its private key, both PEM: ``(cert, key)``.

    Usable as a TLS server's and a client's certificate (both extended key
    usages); marked as its own CA, so a peer can trust exactly this
    certificate as an anchor.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_pair(cert_path: str, key_path: str, common_name: str) -> bool:
    """Make the certificate and key at these paths unless both exist; True if made."""
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return False
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    cert, key = make_pair(common_name)
    write_private(key_path, key)
    write_private(cert_path, cert)
    return True


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, 0600, atomically (a temporary file renamed)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fingerprint(der: bytes) -> str:
    """A certificate's fingerprint as ssh shows a key's: ``SHA256:`` and hex pairs."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def pem_fingerprint(pem: bytes | str) -> str:
    """The fingerprint of one PEM certificate."""
    text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    return fingerprint(ssl.PEM_cert_to_DER_cert(text))


def split_pem(data: bytes | str) -> list[str]:
    """The PEM certificates in ``data``, each a string with its BEGIN and END lines."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    found = []
    start = text.find(begin)
    while start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            break
        found.append(text[start : stop + len(end)] + "\n")
        start = text.find(begin, stop)
    return found
