"""The local stack's secret files: written readable by this user only, from creation on.

Who can read what (README, "The local stack"): the stack's folder is 0700 and every file in it
that holds a secret is 0600, so other users of a shared host read none of them. The secrets
themselves are made per stack by `StackConfig.fresh`; this module only writes them down:

- `private_dir` / `write_private`: a folder 0700, a file 0600 (atomically replaced, never
  world-readable in between);
- `redis_conf`: redis-server's config file, with `requirepass`, so the password is not on a
  command line that `ps` shows;
- `write_seaweedfs_security`: SeaweedFS's `security.toml` (JWT signing of the volume server's
  and the filer's HTTP, reads and writes) and a private CA with one certificate for mutual TLS
  on every gRPC port. The master's and filer's HTTP APIs are off (`weed server -disableHttp`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def private_dir(path: Path) -> Path:
    """`path` as a folder only this user can enter (0700), created if missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # an existing folder keeps its old mode through mkdir
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """Replace `path` with `data`, mode 0600 from the first byte on (a temporary file in the same
    folder, made 0600 by mkstemp, renamed over `path`)."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def redis_conf(port: int, data_dir: Path, password: str) -> str:
    """redis-server's settings for the local stack: loopback only, AOF, a password."""
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            f'dir "{data_dir}"',
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            'save ""',
            "protected-mode yes",
            f'requirepass "{password}"',
            "",
        ]
    )


def write_seaweedfs_security(folder: Path, jwt_keys: dict[str, str]) -> Path:
    """Write `security.toml` and its gRPC certificates into `folder` (what `weed -config_dir`
    reads); return the folder.

    `jwt_keys` has the keys "volume_write", "volume_read", "filer_write", "filer_read". A fresh
    CA signs one certificate that every component shows and asks for (SeaweedFS does not check
    host names); the CA's key is not kept."""
    private_dir(folder)
    ca, cert, key = _grpc_certificates()
    paths = {
        "ca": write_private(folder / "grpc-ca.crt", ca),
        "cert": write_private(folder / "grpc.crt", cert),
        "key": write_private(folder / "grpc.key", key),
    }
    tls = f"cert = {_toml(paths['cert'])}\nkey = {_toml(paths['key'])}\n"
    sections = [
        _jwt("jwt.signing", jwt_keys["volume_write"]),
        _jwt("jwt.signing.read", jwt_keys["volume_read"]),
        _jwt("jwt.filer_signing", jwt_keys["filer_write"]),
        _jwt("jwt.filer_signing.read", jwt_keys["filer_read"]),
        "[access]\nui = false\n",
        "[filer.expose_directory_metadata]\nenabled = false\n",
        f"[grpc]\nca = {_toml(paths['ca'])}\n",
        *(f"[grpc.{c}]\n{tls}" for c in ("master", "volume", "filer", "s3", "client")),
    ]
    write_private(folder / "security.toml", "\n".join(sections))
    return folder


def _jwt(section: str, key: str) -> str:
    return f"[{section}]\nkey = {_toml(key)}\nexpires_after_seconds = 10\n"


def _toml(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


def _grpc_certificates() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, certificate, private key), PEM; the certificate serves both ends."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainyard local stack CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainyard-seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
