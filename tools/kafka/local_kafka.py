#!/usr/bin/env python3
"""Run a local single-node Kafka broker (KRaft) from Maven Central jars, without Docker.

Usage: ``python3 tools/kafka/local_kafka.py up|down|status [--port N] [--home DIR]``.
``ensure_running(..., sasl_users={"alice": "secret"})`` starts a broker whose only client
listener is SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for those users); give it
its own port and home, and ``libs_home=default_home()`` to reuse the resolved jars.
``ensure_running(..., ssl_listener=SslListener(keystore, truststore, client_auth=True))``
starts one whose only client listener is SSL (PEM files; client certificates required
with ``client_auth``).
Stdlib only, so it runs before any venv exists. Environment (defaults in brackets):
  FERRYMAN_KAFKA_PORT [9092]             FERRYMAN_KAFKA_CONTROLLER_PORT [port+1]
  FERRYMAN_KAFKA_HOME [<repo>/.kafka]    FERRYMAN_KAFKA_TIMEOUT [90 s startup wait]
The home holds libs/, data/, logs/, server.properties and kafka.pid. Progress goes to
stderr; ``up`` prints the bootstrap address ``127.0.0.1:<port>`` last on stdout.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"
JAVA_OPTS = ["-Xms128m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{cport}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={home}/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_PROPERTIES = """\
listeners=SASL_PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=SASL_PLAINTEXT://{host}:{port}
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
"""
SSL_PROPERTIES = """\
listeners=SSL://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=SSL://{host}:{port}
listener.security.protocol.map=SSL:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SSL
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={truststore}
ssl.client.auth={client_auth}
"""
BROKER_USER = "ferryman-broker"  # the broker's own (inter-broker) PLAIN identity
LOG_FILES = ("broker.out", "server.log")  # JVM stdout/stderr (WARN+), log4j file (INFO+)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # brokers started by this process


class KafkaError(RuntimeError):
    """Raised when the local broker cannot be started."""


class SslListener(NamedTuple):
    """PEM files of a broker whose only client listener is SSL.

    ``keystore`` holds the broker's unencrypted PKCS#8 private key followed by its certificate
    chain; the certificate must name 127.0.0.1 (SAN) and, with ``client_auth``, allow client
    authentication too: the broker connects to itself with it, and so does the readiness
    probe. ``truststore`` holds the CA certificates that sign the broker's and the clients'
    certificates. ``client_auth`` sets ``ssl.client.auth=required`` (mutual TLS).
    """

    keystore: Path
    truststore: Path
    client_auth: bool = False


def _log(msg: str) -> None:
    print(f"[local-kafka] {msg}", file=sys.stderr, flush=True)


def default_home() -> Path:
    """Return FERRYMAN_KAFKA_HOME, or ``<repo root>/.kafka``."""
    env = os.environ.get("FERRYMAN_KAFKA_HOME")
    return Path(env).resolve() if env else HERE.parents[1] / ".kafka"


def default_port() -> int:
    """Return FERRYMAN_KAFKA_PORT, or 9092."""
    return int(os.environ.get("FERRYMAN_KAFKA_PORT", "9092"))


def _exchange(sock: socket.socket, f: object, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request (header v1) on ``sock``; return the response after its correlation id."""
    corr = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    client = b"ferryman-probe"
    req = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(req)) + req)
    size, got = struct.unpack(">ii", f.read(8))  # type: ignore[attr-defined]
    if got != corr or not 4 <= size < 64 << 20:
        raise ConnectionError("not a Kafka response")
    return f.read(size - 4)  # type: ignore[attr-defined]


def _call(host: str, port: int, api_key: int, version: int, body: bytes, timeout: float) -> bytes:
    """Send one request on a new connection; return the response after its correlation id."""
    with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as f:
        return _exchange(sock, f, api_key, version, body)


def _kafka_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def sasl_broker_count(
    user: str, password: str, host: str = HOST, port: int | None = None, timeout: float = 2.0
) -> int:
    """Like ``broker_count``, after authenticating with SASL PLAIN; 0 on any error."""
    auth = f"\0{user}\0{password}".encode()
    try:
        with (
            socket.create_connection((host, port or default_port()), timeout=timeout) as sock,
            sock.makefile("rb") as f,
        ):
            handshake = _exchange(sock, f, 17, 1, _kafka_string("PLAIN"))  # SaslHandshake v1
            authenticated = _exchange(sock, f, 36, 0, struct.pack(">i", len(auth)) + auth)
            if struct.unpack(">h", handshake[:2])[0] or struct.unpack(">h", authenticated[:2])[0]:
                return 0
            body = _exchange(sock, f, 3, 4, struct.pack(">i?", 0, False))  # Metadata v4
            return struct.unpack(">i", body[4:8])[0]
    except (OSError, struct.error):
        return 0


def ssl_broker_count(
    listener: SslListener, host: str = HOST, port: int | None = None, timeout: float = 2.0
) -> int:
    """Like ``broker_count``, over TLS presenting the broker's own certificate; 0 on error."""
    try:
        context = ssl.create_default_context(cafile=str(listener.truststore))
        context.load_cert_chain(listener.keystore)
        with (
            socket.create_connection((host, port or default_port()), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as sock,
            sock.makefile("rb") as f,
        ):
            body = _exchange(sock, f, 3, 4, struct.pack(">i?", 0, False))  # Metadata v4
            return struct.unpack(">i", body[4:8])[0]
    except (OSError, struct.error):  # ssl.SSLError is an OSError
        return 0


def is_answering(host: str = HOST, port: int | None = None, timeout: float = 2.0) -> bool:
    """Return True if a Kafka broker answers an ApiVersions v0 request on host:port."""
    try:
        body = _call(host, port or default_port(), 18, 0, b"", timeout)
        err, n = struct.unpack(">hi", body[:6])
        keys = {struct.unpack(">h", body[6 + 6 * i : 8 + 6 * i])[0] for i in range(n)}
    except (OSError, struct.error):
        return False
    return err == 0 and {0, 1, 3}.issubset(keys)  # Produce, Fetch, Metadata


def broker_count(host: str = HOST, port: int | None = None, timeout: float = 2.0) -> int:
    """Return how many live (unfenced) brokers a Metadata v4 answer lists; 0 on error."""
    try:
        body = _call(host, port or default_port(), 3, 4, struct.pack(">i?", 0, False), timeout)
        return struct.unpack(">i", body[4:8])[0]  # after throttle_time_ms
    except (OSError, struct.error):
        return 0


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (reaps our own exited children)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(home: Path, port: int | None = None) -> int | None:
    """Return the pid in ``home``'s pid file if it still runs kafka.Kafka (on ``port``)."""
    try:
        pid, recorded = map(int, (home / "kafka.pid").read_text().split())
        if port is not None and port != recorded:
            return None
        for _ in range(50):  # /proc/PID/cmdline can read empty for a moment while a JVM starts
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline or not _alive(pid):
                return pid if _alive(pid) and b"kafka.Kafka" in cmdline else None
            time.sleep(0.1)
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log, without Java stack frames (which bury the actual error)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    kept = [ln for ln in text.splitlines() if not ln.startswith("\t")][-lines:]
    return f"--- tail of {path} (stack frames omitted) ---\n" + "\n".join(kept)


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if res.returncode != 0:
        raise KafkaError(f"{what} failed ({res.returncode}):\n{res.stdout}{res.stderr}")


def ensure_libs(home: Path) -> Path:
    """Resolve the broker jars into ``home/libs`` with Maven unless already current."""
    libs, stamp = home / "libs", home / "libs" / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaError("mvn not found on PATH; install Maven (apt-get install maven)")
    tmp = home / "libs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _log(f"resolving Kafka jars from Maven Central into {libs} ...")
    t0 = time.monotonic()
    goal = ["dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    _run([mvn, "-q", "-B", "-f", str(POM), *goal], "mvn dependency:copy-dependencies")
    (tmp / ".pom-sha256").write_text(digest + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    _log(f"resolved {len(list(libs.glob('*.jar')))} jars in {time.monotonic() - t0:.1f}s")
    return libs


def _server_properties(
    home: Path,
    port: int,
    cport: int,
    sasl_users: dict[str, str] | None,
    ssl_listener: SslListener | None = None,
) -> str:
    plain = SERVER_PROPERTIES.format(host=HOST, port=port, cport=cport, home=home)
    if sasl_users is None and ssl_listener is None:
        return plain
    kept = [
        ln
        for ln in plain.splitlines()
        if not ln.startswith(("listeners=", "advertised.", "listener."))
    ]
    if ssl_listener is not None:
        tls = SSL_PROPERTIES.format(
            host=HOST,
            port=port,
            cport=cport,
            keystore=ssl_listener.keystore.resolve(),
            truststore=ssl_listener.truststore.resolve(),
            client_auth="required" if ssl_listener.client_auth else "none",
        )
        return "\n".join(kept) + "\n" + tls
    assert sasl_users is not None
    users = " ".join(f'user_{name}="{secret}"' for name, secret in sasl_users.items())
    jaas = f'username="{BROKER_USER}" password="{sasl_users[BROKER_USER]}" {users}'
    sasl = SASL_PROPERTIES.format(host=HOST, port=port, cport=cport, plain_users=jaas)
    return "\n".join(kept) + "\n" + sasl


def _scram_arguments(sasl_users: dict[str, str] | None) -> list[str]:
    """``kafka-storage format --add-scram`` arguments creating each user's SCRAM credentials."""
    arguments: list[str] = []
    for name, secret in (sasl_users or {}).items():
        for mechanism in SASL_MECHANISMS[1:]:
            arguments += ["--add-scram", f"{mechanism}=[name={name},password={secret}]"]
    return arguments


def _start(
    home: Path,
    port: int,
    cport: int,
    sasl_users: dict[str, str] | None = None,
    libs_home: Path | None = None,
    ssl_listener: SslListener | None = None,
) -> int:
    """Resolve jars, write config, format storage if new, and spawn the broker; return pid."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaError("java not found (need Java 17+ on PATH or JAVA_HOME)")
    props = [f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.dir={home / 'logs'}"]
    cmd = [java, *JAVA_OPTS, *props, "-cp", f"{ensure_libs(libs_home or home) / '*'}"]
    config = home / "server.properties"
    config.write_text(_server_properties(home, port, cport, sasl_users, ssl_listener))
    if not (home / "data" / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid() does
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        _log(f"formatting storage in {home / 'data'} (cluster id {cluster_id})")
        fmt = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)]
        fmt += _scram_arguments(sasl_users)
        _run([*cmd, *fmt], "kafka storage format")
    _log(f"starting broker on {HOST}:{port} (controller {HOST}:{cport})")
    with open(home / "logs" / "broker.out", "ab") as out:
        args = [*cmd, "kafka.Kafka", str(config)]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=home, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    (home / "kafka.pid").write_text(f"{proc.pid} {port}\n")
    return proc.pid


def _wait(
    home: Path,
    port: int,
    pid: int,
    timeout: float,
    started: bool,
    sasl_users: dict[str, str] | None = None,
    ssl_listener: SslListener | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            problem = f"broker (pid {pid}) exited during startup"
            break
        if ssl_listener is not None:
            ready = ssl_broker_count(ssl_listener, HOST, port) > 0
        elif sasl_users is None:
            ready = is_answering(HOST, port, 1.0) and broker_count(HOST, port, 2.0) > 0
        else:
            ready = sasl_broker_count(BROKER_USER, sasl_users[BROKER_USER], HOST, port) > 0
        if ready:
            return
        time.sleep(0.25)
    else:
        problem = f"broker not ready on {HOST}:{port} after {timeout:g}s"
        if started:
            stop(home, port)
    raise KafkaError("\n".join([problem, *(_tail(home / "logs" / f) for f in LOG_FILES)]))


def ensure_running(
    port: int | None = None,
    home: Path | None = None,
    timeout: float = 90,
    *,
    controller_port: int | None = None,
    sasl_users: dict[str, str] | None = None,
    libs_home: Path | None = None,
    ssl_listener: SslListener | None = None,
) -> str:
    """Start the broker unless one answers already; return ``"127.0.0.1:<port>"``.

    Without ``port``, FERRYMAN_KAFKA_PORT and FERRYMAN_KAFKA_CONTROLLER_PORT apply; with one,
    the controller listens on ``controller_port`` (default port+1). ``home`` defaults to
    FERRYMAN_KAFKA_HOME or ``<repo>/.kafka``. With ``sasl_users`` (name -> password) the only
    client listener is SASL_PLAINTEXT; the users exist for PLAIN and both SCRAM mechanisms
    (set when the storage is formatted, so use a fresh home). ``libs_home`` takes the jars
    from another home. With ``ssl_listener`` the only client listener is SSL instead (see
    SslListener). Raises KafkaError (stopping a broker it started that never got ready), or
    ValueError when given both ``sasl_users`` and ``ssl_listener``.
    """
    if sasl_users is not None and ssl_listener is not None:
        raise ValueError("give sasl_users or ssl_listener, not both (SASL_SSL is not supported)")
    env_ctrl = os.environ.get("FERRYMAN_KAFKA_CONTROLLER_PORT") if port is None else None
    port = port or default_port()
    controller_port = controller_port or (int(env_ctrl) if env_ctrl else port + 1)
    if sasl_users is not None:
        sasl_users = {BROKER_USER: base64.b32encode(os.urandom(10)).decode(), **sasl_users}
    home = (home or default_home()).resolve()
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serialise concurrent `up`s on one home
        if is_answering(HOST, port):
            _log(f"a broker already answers on {HOST}:{port}; not starting another")
            return f"{HOST}:{port}"
        pid = _read_pid(home)
        if pid is not None and pid != _read_pid(home, port):
            raise KafkaError(f"{home} is in use by broker pid {pid} on another port; stop it")
        started = pid is None
        if not started:
            _log(f"broker pid {pid} from {home} is already starting; waiting for it")
        pid = pid or _start(home, port, controller_port, sasl_users, libs_home, ssl_listener)
        t0 = time.monotonic()
        _wait(home, port, pid, timeout, started, sasl_users, ssl_listener)
        _log(f"broker ready on {HOST}:{port} (pid {pid}, {time.monotonic() - t0:.1f}s)")
    return f"{HOST}:{port}"


def stop(home: Path | None = None, port: int | None = None, timeout: float = 30) -> bool:
    """Stop the broker in ``home``'s pid file (SIGTERM, then SIGKILL); False if none ran.

    With ``port``, only a broker that was started from ``home`` on that port is stopped.
    """
    home = (home or default_home()).resolve()
    pid = _read_pid(home, port)
    if pid is None:
        return False
    _log(f"stopping broker pid {pid} (SIGTERM)")
    t0 = time.monotonic()
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            break
        _log(f"broker pid {pid} still alive after {wait:.0f}s; sending SIGKILL")
    _CHILDREN.pop(pid, None)
    (home / "kafka.pid").unlink(missing_ok=True)
    _log(f"broker pid {pid} stopped ({time.monotonic() - t0:.1f}s)")
    return True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    ap = argparse.ArgumentParser(description="Local single-node Kafka broker for Ferryman.")
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--port", type=int, help="broker port (env FERRYMAN_KAFKA_PORT, 9092)")
    ap.add_argument("--home", type=Path, help="state dir (env FERRYMAN_KAFKA_HOME)")
    timeout = float(os.environ.get("FERRYMAN_KAFKA_TIMEOUT", "90"))
    ap.add_argument("--timeout", type=float, default=timeout, help="startup wait, seconds")
    args = ap.parse_args(argv)
    port = args.port or default_port()
    if args.command == "status":
        ok = is_answering(HOST, port)
        _log(f"broker on {HOST}:{port} is {'answering' if ok else 'not answering'}")
        return 0 if ok else 1
    if args.command == "down":
        if not stop(args.home, args.port):
            other = " (a broker not started from there answers)" if is_answering(HOST, port) else ""
            _log(f"no broker running from {(args.home or default_home()).resolve()}{other}")
        return 0
    try:
        print(ensure_running(args.port, args.home, args.timeout))
    except KafkaError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
