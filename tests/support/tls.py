"""Throwaway certificates for TLS tests, made with the openssl CLI at test time."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA that signed the server and client certificates
    other_ca: Path  # a CA that signed nothing here: trusting it must fail
    server_cert: Path  # for DNS:localhost only (not 127.0.0.1: the hostname check can fail)
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _openssl(*arguments: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("TLS tests need the openssl command line tool", pytrace=False)
    subprocess.run([openssl, *map(str, arguments)], check=True, capture_output=True)  # noqa: S603 - fixed tool, our arguments


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _key(key)
    _openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> Path:
    key, request, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    _key(key)
    _openssl("req", "-new", "-key", key, "-out", request, "-subj", f"/CN={name}")
    extfile = directory / f"{name}.ext"
    extfile.write_text(extensions + "\n")
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", extfile,
    )  # fmt: skip
    return cert


def make_certificates(directory: Path) -> Certificates:
    ca = _ca(directory, "conveyor-test-ca")
    other_ca, _ = _ca(directory, "someone-elses-ca")
    server = _signed(
        directory, "localhost", ca, "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth"
    )
    client = _signed(directory, "conveyor-client", ca, "extendedKeyUsage=clientAuth")
    return Certificates(
        ca=ca[0],
        other_ca=other_ca,
        server_cert=server,
        server_key=directory / "localhost.key",
        client_cert=client,
        client_key=directory / "conveyor-client.key",
    )
