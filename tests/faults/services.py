"""Dependencies a fault test owns: its own redis-server and its own PostgreSQL cluster, on free
ports in temporary directories, frozen (SIGSTOP), thawed and killed by their PIDs. The shared
services the rest of the suite uses are never touched."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.servers import free_port


def require_binary(path: str | None, what: str) -> str:
    """The binary's path; without it the test is skipped locally and fails in CI."""
    if path and os.access(path, os.X_OK):
        return path
    message = f"{what} is not installed: fault tests need it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _wait_for_port(port: int, deadline: float) -> None:
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.05)


@dataclass
class RedisServer:
    """A redis-server child process."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (no persistence) on a free port."""
    binary = require_binary(shutil.which("redis-server"), "redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="warden-fault-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(proc, port)
        try:
            _wait_for_port(port, time.monotonic() + 10)
            yield server
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _postgres_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl else None


def _children(pid: int) -> list[int]:
    """Direct children of a process (the postmaster's backends and workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of our own (initdb in a temporary directory)."""

    bindir: str
    datadir: str
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        # fsync off: only the server process is killed, never the machine, so the page cache
        # keeps every commit (synchronous_commit must stay on: a crash would lose the last ones).
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off"
        log = os.path.join(self.datadir, "server.log")
        self._run("pg_ctl", "-D", self.datadir, "-o", options, "-l", log, "-w", "start")

    def kill(self) -> None:
        """Stop at once, as a crash would (no shutdown checkpoint, connections dropped)."""
        self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")

    def _pids(self) -> list[int]:
        with open(os.path.join(self.datadir, "postmaster.pid")) as pidfile:
            postmaster = int(pidfile.readline())
        return [postmaster, *_children(postmaster)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: sockets stay open, nothing answers."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A fresh cluster (trust auth, superuser `postgres`) on a free port; run as the
    `postgres` system user when the tests run as root (PostgreSQL refuses root)."""
    bindir = _postgres_bin()
    require_binary(bindir and os.path.join(bindir, "initdb"), "PostgreSQL (initdb)")
    assert bindir is not None
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            pytest.fail("running as root, and there is no `postgres` user to run PostgreSQL")
    workdir = tempfile.mkdtemp(prefix="warden-fault-pg-")
    datadir = os.path.join(workdir, "data")
    if user:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    cluster = PostgresCluster(bindir, datadir, free_port(), user)
    try:
        cluster._run(
            "initdb",
            "-D",
            datadir,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.thaw()
        with contextlib.suppress(Exception):
            cluster.kill()
        shutil.rmtree(workdir, ignore_errors=True)
