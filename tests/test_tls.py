"""TLS against a redis-server the tests start with ``--tls-port`` and certificates they make
(openssl CLI): ``rediss://`` verifies the chain and the host name, mutual TLS, and the
password read from a file."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from tests.conftest import running_worker
from tests.helpers import INPUT, OUTPUT, add, event, identify, output
from tests.redis_proc import WORKER_PASSWORD, RedisServer, free_port, require_binary
from tests.test_cli import cli
from worker.acl import WORKER_USER

pytestmark = pytest.mark.redis_server


class Pair(NamedTuple):
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(
        [require_binary("openssl"), *map(str, args)], check=True, capture_output=True, timeout=30
    )


def make_ca(directory: Path, name: str) -> Pair:
    ca = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        ca.key,
        "-out",
        ca.cert,
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
    )
    return ca


def make_cert(directory: Path, ca: Pair, name: str, san: str) -> Pair:
    """A leaf certificate for ``san`` (``IP:127.0.0.1``, ``DNS:...``) signed by ``ca``."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        pair.key,
        "-out",
        csr,
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca.cert,
        "-CAkey",
        ca.key,
        "-CAcreateserial",
        "-out",
        pair.cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return pair


class Pki(NamedTuple):
    ca: Pair
    server: Pair
    client: Pair
    other_ca: Pair
    wrong_host: Pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(d, "test-ca"), make_ca(d, "other-ca")
    return Pki(
        ca=ca,
        server=make_cert(d, ca, "server", "IP:127.0.0.1"),
        client=make_cert(d, ca, "client", "DNS:stitch-worker"),
        other_ca=other_ca,
        wrong_host=make_cert(d, ca, "elsewhere", "DNS:redis.elsewhere.example"),
    )


class TlsServer(NamedTuple):
    server: RedisServer
    port: int

    def url(self, user: str = WORKER_USER) -> str:
        return f"rediss://{user}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def tls_servers(pki: Pki) -> Iterator[dict[str, TlsServer]]:
    """redis-servers with a plain port (the tests' own client) and a TLS port: one presents
    a good certificate and wants client certificates, one a certificate for another host."""
    servers = {}
    for name, cert, clients in (
        ("mutual", pki.server, "yes"),
        ("optional", pki.server, "optional"),
        ("wrong-host", pki.wrong_host, "optional"),
    ):
        port = free_port()
        server = RedisServer(
            extra=[
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(cert.cert),
                "--tls-key-file",
                str(cert.key),
                "--tls-ca-cert-file",
                str(pki.ca.cert),
                "--tls-auth-clients",
                clients,
            ]
        ).start()
        servers[name] = TlsServer(server, port)
    yield servers
    for tls in servers.values():
        tls.server.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "redis-password"
    path.write_text(WORKER_PASSWORD + "\n")  # as `kubectl create secret --from-file` keeps it
    return path


def tls_env(tls: TlsServer, pki: Pki, password_file: Path, **extra: str) -> dict[str, str]:
    return {
        "STITCH_REDIS_URL": tls.url(),
        "STITCH_REDIS_PASSWORD_FILE": str(password_file),
        "STITCH_REDIS_CA_FILE": str(pki.ca.cert),
        **extra,
    }


def test_worker_runs_over_tls_with_the_password_from_a_file(
    tls_servers: dict[str, TlsServer], pki: Pki, password_file: Path, tmp_path: Path
) -> None:
    """The daemon drains over rediss:// as stitch-worker, verifying the server against
    STITCH_REDIS_CA_FILE, with the password from STITCH_REDIS_PASSWORD_FILE; its log shows
    the URL and never the password."""
    tls = tls_servers["optional"]
    c = tls.server.client()
    c.flushall()
    add(c, "acme", identify("cust-1", "anon-1"))
    ids = [add(c, "acme", event("anon-1")) for _ in range(3)]
    log = tmp_path / "w.log"
    env = tls_env(tls, pki, password_file)
    settings = {k.removeprefix("STITCH_").lower(): v for k, v in env.items()}
    with running_worker(
        "", "--drain", log_path=log, **settings, consumer="tls", block_ms=50
    ) as proc:
        assert proc.wait(timeout=60) == 0, log.read_text()
    assert [e["source_id"] for e in output(c)] == ids
    assert {e["resolved_user_id"] for e in output(c)} == {"cust-1"}
    text = log.read_text()
    assert f'"redis": "{tls.url()}"' in text
    assert WORKER_PASSWORD not in text
    assert c.xpending(INPUT, "stitch")["pending"] == 0
    c.delete(INPUT, OUTPUT)


def test_mutual_tls_with_a_client_certificate(
    tls_servers: dict[str, TlsServer], pki: Pki, password_file: Path
) -> None:
    """A server that wants client certificates accepts STITCH_REDIS_CERT_FILE/KEY_FILE and
    refuses the handshake without them."""
    tls = tls_servers["mutual"]
    tls.server.client().hset("alias:acme", "anon-1", "cust-1")
    with_cert = tls_env(
        tls,
        pki,
        password_file,
        STITCH_REDIS_CERT_FILE=str(pki.client.cert),
        STITCH_REDIS_KEY_FILE=str(pki.client.key),
    )
    done = cli("resolve", "--tenant", "acme", "anon-1", env=with_cert)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "anon-1\tcust-1\n"
    refused = cli("resolve", "--tenant", "acme", "anon-1", env=tls_env(tls, pki, password_file))
    assert refused.returncode == 3
    # the client sees an alert or a reset, whichever comes first; the server says why
    assert "peer did not return a certificate" in (tls.server.dir / "log").read_text()


@pytest.mark.parametrize(
    ("server", "trusted", "why"),
    [
        ("optional", "other_ca", "certificate verify failed"),
        ("optional", None, "certificate verify failed"),
        ("wrong-host", "ca", "IP address mismatch|Hostname mismatch"),
    ],
    ids=["signed-by-another-ca", "system-trust-store", "certificate-for-another-host"],
)
def test_the_server_certificate_is_verified(
    tls_servers: dict[str, TlsServer],
    pki: Pki,
    password_file: Path,
    server: str,
    trusted: str | None,
    why: str,
) -> None:
    """A server whose certificate does not chain to the trusted CA, or names another host,
    is refused (exit 3, the reason in the message): verification cannot be skipped."""
    tls = tls_servers[server]
    env = tls_env(tls, pki, password_file)
    if trusted is None:
        del env["STITCH_REDIS_CA_FILE"]
    else:
        env["STITCH_REDIS_CA_FILE"] = str(getattr(pki, trusted).cert)
    result = cli("resolve", "--tenant", "acme", "anon-1", env=env)
    assert result.returncode == 3
    assert any(reason in result.stderr for reason in why.split("|")), result.stderr


def test_plain_redis_url_is_refused_by_the_tls_port(
    tls_servers: dict[str, TlsServer], password_file: Path
) -> None:
    """The TLS port does not speak plain RESP: the rediss:// tests really ran over TLS."""
    tls = tls_servers["optional"]
    env = {
        "STITCH_REDIS_URL": f"redis://{WORKER_USER}@127.0.0.1:{tls.port}/0",
        "STITCH_REDIS_PASSWORD_FILE": str(password_file),
    }
    assert cli("resolve", "--tenant", "acme", "anon-1", env=env).returncode == 3


def test_rotated_password_is_read_again_on_reconnect(
    tls_servers: dict[str, TlsServer], pki: Pki, password_file: Path
) -> None:
    """A rotated Secret (new password in Redis and in the file) is picked up by the next
    connection without a restart; a file that goes missing keeps the last password."""
    from worker.config import Settings
    from worker.connection import connect

    tls = tls_servers["optional"]
    env = tls_env(tls, pki, password_file)
    client = connect(Settings.from_env({**env, "STITCH_CONSUMER": "rot"}))
    admin = tls.server.client()
    try:
        assert client.ping()
        admin.execute_command("ACL", "SETUSER", WORKER_USER, "resetpass", ">rotated-1")
        password_file.write_text("rotated-1\n")
        client.connection_pool.disconnect()
        assert client.ping()
        password_file.unlink()
        client.connection_pool.disconnect()
        assert client.ping()
        admin.execute_command("ACL", "SETUSER", WORKER_USER, "resetpass", ">rotated-2")
        client.connection_pool.disconnect()
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()
        admin.execute_command("ACL", "SETUSER", WORKER_USER, "resetpass", ">" + WORKER_PASSWORD)
