"""Syslog destinations against a real rsyslog (Debian's package), started here on a
loopback port with its own configuration: RFC 5424 frames, octet counting, CEF/LEEF/JSON
bodies, over TCP and TLS (rsyslog's gtls driver, a throwaway CA made here)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from forward_helpers import forward_cli, rows

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd"
                                         if os.path.exists("/usr/sbin/rsyslogd") else None)
GTLS = any(Path(d, "lmnsd_gtls.so").exists() for d in (
    "/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog",
    "/usr/lib/rsyslog"))

if RSYSLOGD is None:
    if os.environ.get("CI") == "true":
        pytest.fail("rsyslogd is missing: .ci/run installs it (apt-get install rsyslog)",
                    pytrace=False)
    pytest.skip("rsyslogd is not installed (apt-get install rsyslog)", allow_module_level=True)

# RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
FRAME = re.compile(r'^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[otel_audit@32473 id="([0-9a-f]+)"'
                   r' stream="[^"]+" seq="(\d+)"\]) (.*)$')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forward test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    from ipaddress import ip_address

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "cert.pem",
             "key": directory / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    return paths


class Rsyslog:
    """rsyslogd in the foreground: imtcp on 127.0.0.1, raw messages to a file."""

    def __init__(self, directory: Path, *, tls: bool) -> None:
        self.port = _free_port()
        self.output = directory / "received.log"
        self.certs = _certificates(directory) if tls else {}
        work = directory / "work"
        work.mkdir()
        lines = [f'global(workDirectory="{work}" maxMessageSize="64k"']
        if tls:
            lines[0] += (f' defaultNetstreamDriver="gtls"'
                         f' defaultNetstreamDriverCAFile="{self.certs["ca"]}"'
                         f' defaultNetstreamDriverCertFile="{self.certs["cert"]}"'
                         f' defaultNetstreamDriverKeyFile="{self.certs["key"]}"')
        lines[0] += ")"
        driver = (' streamDriver.name="gtls" streamDriver.mode="1"'
                  ' streamDriver.authMode="anon"') if tls else ""
        lines += [
            f'module(load="imtcp"{driver})',
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}" '
            f'supportOctetCountedFraming="on")',
            'template(name="raw" type="string" string="%rawmsg%\\n")',
            f'*.* action(type="omfile" file="{self.output}" template="raw")',
        ]
        config = directory / "rsyslog.conf"
        config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([str(RSYSLOGD), "-n", "-f", str(config),
                                      "-i", str(directory / "rsyslogd.pid")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:  # ready once it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise RuntimeError(f"rsyslogd did not start: {out}") from None
                time.sleep(0.05)

    def lines(self, expected: int, timeout: float = 60) -> list[str]:
        """The messages written, once ``expected`` of them are in the file (rsyslog's
        queue writes after the connection is closed)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output.read_text() if self.output.exists() else ""
            got = [line for line in text.splitlines() if line]
            if len(got) >= expected or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Any]:
    started: list[Rsyslog] = []

    def start(tls: bool = False) -> Rsyslog:
        directory = tmp_path / f"rsyslog{len(started)}"
        directory.mkdir()
        server = Rsyslog(directory, tls=tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _cef_extension(body: str) -> dict[str, str]:
    """Parse a CEF extension (unescaping ``\\=`` and ``\\\\``)."""
    header_and_ext = re.split(r"(?<!\\)\|", body, maxsplit=7)
    assert header_and_ext[0] == "CEF:0" and len(header_and_ext) == 8
    ext = header_and_ext[7]
    pairs = re.findall(r"(\w+)=((?:[^=\\]|\\.)*?)(?=\s\w+=|$)", ext)
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in pairs}


def test_rsyslog_receives_rfc5424_frames_with_cef_bodies(source: str, rsyslog: Any) -> None:
    server = rsyslog()
    forward_cli("--db", source, "--to", f"syslog+tcp://127.0.0.1:{server.port}",
                "--format", "cef", "--once", "--batch-size", "50")
    stored = rows(source)
    lines = server.lines(len(stored))
    assert len(lines) == len(stored)
    seen = set()
    for line in lines:
        match = FRAME.match(line)
        assert match, line
        pri, _ts, _host, app, _procid, msgid, _sd, record_id, _seq, body = match.groups()
        record = stored[record_id]
        assert app == "otel-audit" and msgid == record["action"]
        assert int(pri) == 13 * 8 + (6 if record["success"] else 4)
        ext = _cef_extension(body)
        assert ext["externalId"] == record_id
        assert ext["suser"] == record["user_id"]
        assert ext["src"] == record["client_ip"]
        assert ext["outcome"] == ("success" if record["success"] else "failure")
        assert ext["rt"] == str(int(record["timestamp"].replace(tzinfo=dt.UTC)
                                    .timestamp() * 1000))
        seen.add(record_id)
    assert seen == set(stored)


@pytest.mark.skipif(not GTLS and os.environ.get("CI") != "true",
                    reason="rsyslog's TLS driver is missing (apt-get install rsyslog-gnutls)")
def test_rsyslog_over_tls_with_json_and_leef(source: str, rsyslog: Any) -> None:
    server = rsyslog(tls=True)
    ca = server.certs["ca"]
    forward_cli("--db", source, "--to", f"syslog+tls://127.0.0.1:{server.port}?ca={ca}",
                "--once", "--batch-size", "60")
    stored = rows(source)
    lines = server.lines(len(stored))
    docs = [json.loads(FRAME.match(line).group(10)) for line in lines]  # type: ignore[union-attr]
    assert sorted(d["id"] for d in docs) == sorted(stored)
    assert all(d["new_values"] == stored[d["id"]]["new_values"] for d in docs)
    # the same records as LEEF to a second destination (its own cursors)
    forward_cli("--db", source, "--to", f"syslog+tls://127.0.0.1:{server.port}?ca={ca}",
                "--name", "qradar", "--format", "leef", "--once")
    leef = [FRAME.match(line).group(10) for line in server.lines(2 * len(stored))[len(stored):]]  # type: ignore[union-attr]
    assert len(leef) == len(stored)
    first = dict(pair.split("=", 1) for pair in leef[0].split("|", 6)[6].split("^"))
    assert first["externalId"] in stored and leef[0].startswith("LEEF:2.0|otel_audit|")
    assert first["usrName"] == stored[first["externalId"]]["user_id"]


def test_syslog_receiver_down_is_retried_not_lost(source: str, tmp_path: Path) -> None:
    result = forward_cli("--db", source, "--to", f"syslog+tcp://127.0.0.1:{_free_port()}",
                         "--once", "--retry-for", "0.5", check=False)
    assert result.returncode == 2 and "no acknowledgement" in result.stderr
