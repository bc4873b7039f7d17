"""A throw-away CA, the broker's certificate and a client certificate, made with openssl.

Everything is PEM: the broker reads its key and chain as a PEM keystore (KIP-651), librdkafka
and aiokafka read the same files. Keys are unencrypted PKCS#8 in files of mode 0600; this is
a dev and test broker, and the files live in its state dir only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devbroker.errors import DevBrokerError

# The names a client may use for the broker on loopback; librdkafka checks the host name
# against them (ssl.endpoint.identification.algorithm=https is its default since 2.0).
_BROKER_SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost"
_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one CA and the certificates it issued, all under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def broker_keystore(self) -> Path:
        # Key first, then the certificate chain: the layout Kafka's PEM keystore expects.
        return self.root / "broker-keystore.pem"

    @property
    def client_cert(self) -> Path:
        return self.root / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    def complete(self) -> bool:
        return all(
            p.is_file()
            for p in (self.ca_cert, self.broker_keystore, self.client_cert, self.client_key)
        )


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise DevBrokerError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _issue(ca: TlsFiles, name: str, subject: str, extension: str | None, work: Path) -> None:
    """A key and a certificate for ``subject`` signed by the CA: <work>/<name>.key, .pem."""
    key, csr, cert = (work / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        str(key),
        cwd=work,
    )
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=work)
    sign = [
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.ca_cert),
        "-CAkey",
        str(ca.ca_key),
        "-CAcreateserial",
        "-days",
        str(_DAYS),
        "-out",
        str(cert),
    ]
    if extension is not None:
        ext_file = work / f"{name}.ext"
        ext_file.write_text(extension + "\n")
        sign += ["-extfile", str(ext_file)]
    _openssl(*sign, cwd=work)
    csr.unlink()


def make_ca(root: Path, common_name: str = "flowscope devbroker CA") -> TlsFiles:
    """A new self-signed CA in ``root`` (which must not hold one yet)."""
    if shutil.which("openssl") is None:
        raise DevBrokerError("openssl not found: install it (apt-get install openssl)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    files = TlsFiles(root)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(files.ca_key),
        "-out",
        str(files.ca_cert),
        "-days",
        str(_DAYS),
        "-subj",
        f"/CN={common_name}",
        cwd=root,
    )
    return files


def ensure_tls(root: Path) -> TlsFiles:
    """The CA, the broker's keystore and a client certificate; made once per state dir."""
    files = TlsFiles(root)
    if files.complete():
        return files
    shutil.rmtree(root, ignore_errors=True)
    make_ca(root)
    _issue(files, "broker", "/CN=localhost", _BROKER_SAN, root)
    files.broker_keystore.write_text(
        (root / "broker.key").read_text() + (root / "broker.pem").read_text()
    )
    _issue(files, "client", "/CN=flowscope", None, root)
    for path in root.iterdir():
        os.chmod(path, 0o600)
    return files
