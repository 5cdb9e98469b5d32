"""Warden benchmark (never a test): requests/s, p99 latency and server CPU per request of
Warden's hot routes next to a bare FastAPI hello-world, a raw ASGI hello-world and a bare
FastAPI + httpx proxy, served the same way, at the same connection counts, on this machine.

    scripts/bench [--connections 16,32,64] [--duration 6] [--rounds 1] [--json out.json] [--no-pin]
                  [--database-url URL] [--redis-url URL] [--loadgen auto|wrk|python]
                  [--threads N] [--targets hello,authz_check,...]

Starts Warden, an echo upstream and the reference apps as separate uvicorn processes on
127.0.0.1, seeds a tenant through the public API, then, for every connection count, loads every
target of `TARGETS` one after the other with wrk (or, without wrk, a Python asyncio load
generator in its own process); `--rounds N` repeats that whole sweep N times and reports
medians (on a shared 2-CPU machine one 6 s run moves by 10 to 25%). With `--database-url` a
fresh database is created next to the one named (and dropped afterwards); with `--redis-url`
that Redis database is flushed first.

Before each target, every server must be idle (a reference still draining a backlog would
share the CPUs with the next run). On a machine with two CPUs or more the server under load
runs alone on the first CPU while wrk, the upstream and every idle server share the others
(`--no-pin` leaves placement to the scheduler, under which one run's CPU per request moved by
up to 40% when the server and wrk met on one CPU). CPU per request is the user + system
time of the serving process (from `/proc/<pid>/stat`) spent while the target ran, divided by
the requests completed. A request slower than 1 s is a failure (wrk `--timeout 1s`). Exits 1
when any measured request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"
PASSWORD = "bench-password-123456"  # noqa: S105  (a throwaway bench tenant)
WARM_REQUESTS = 5
SETTLE_SECONDS = 1.0
# Before a target is loaded every server must be idle: a reference that fell behind (the httpx
# proxy, with thousands of requests still queued when wrk stops) would otherwise keep a CPU
# busy through the next target's run. Idle: under 2% of a CPU over a 0.5 s window.
QUIET_WINDOW_SECONDS = 0.5
QUIET_CPU_SHARE = 0.02
QUIET_MAX_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 1.0  # a slower answer is a failure (issue: no request over 1 s)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# --no-proxy-headers: only Warden's TRUST_FORWARDED_FOR decides whether X-Forwarded-For counts.
UVICORN_FLAGS = ("--log-level", "warning", "--no-access-log", "--no-proxy-headers")


@dataclass(frozen=True)
class Target:
    """One route under load; `{decision_slug}`, `{forward_slug}` in path/body/headers are filled
    from the seed, `bearer` adds the owner's access token."""

    name: str
    server: str  # "hello", "raw", "proxy" or "warden"
    method: str
    path: str
    body: Any = None  # sent as JSON when not None
    bearer: bool = False
    headers: dict[str, str] = field(default_factory=dict)


# Every measured route, in order; `hello` is the baseline the ratios refer to. One line per route.
# fmt: off
GATEWAY_HOST = "gateway.bench.example"  # bound to the decision endpoint (fresh database per run)
TARGETS: tuple[Target, ...] = (
    Target("hello", "hello", "GET", "/hello"),
    Target("raw_asgi", "raw", "GET", "/hello"),
    Target("proxy_httpx", "proxy", "POST", "/echo", {"item": "bench", "qty": 3, "tags": ["a", "b"]}),  # noqa: E501
    Target("authz_check", "warden", "POST", "/api/v1/authz/check", {"endpoint": "{decision_slug}"}, bearer=True),  # noqa: E501
    Target("query_decision", "warden", "POST", "/api/v1/endpoints/{decision_slug}/query", bearer=True),  # noqa: E501
    Target("query_forward", "warden", "POST", "/api/v1/endpoints/{forward_slug}/query", {"item": "bench", "qty": 3, "tags": ["a", "b"]}, bearer=True),  # noqa: E501
    Target("gateway_forward", "warden", "GET", "/api/v1/authz/forward", headers={"X-Forwarded-Host": GATEWAY_HOST, "X-Forwarded-Uri": "/x"}, bearer=True),  # noqa: E501
)
# fmt: on


@dataclass(frozen=True)
class HttpRequest:
    """A fully rendered request: what every connection sends over and over."""

    method: str
    port: int
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def url(self) -> str:
        """The absolute URL."""
        return f"http://{HOST}:{self.port}{self.path}"

    def has_body(self) -> bool:
        """Whether a Content-Length goes out (always for POST/PUT/PATCH, even when 0)."""
        return bool(self.body) or self.method in {"POST", "PUT", "PATCH"}

    def raw(self) -> bytes:
        """The request as HTTP/1.1 bytes (keep-alive is the HTTP/1.1 default)."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.has_body():
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class Result:
    """The figures of one target."""

    target: str
    method: str
    url: str
    loadgen: str
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    error_samples: list[str]
    connections: int = 0
    cpu_seconds: float = 0.0  # user + system time of the serving process during the run
    ratio_to_hello: float | None = None
    p99_ratio_to_hello: float | None = None
    server_log: list[str] = field(default_factory=list)  # Warden warning+ lines, summarised
    round: int = 1

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU per completed request, in µs."""
        return self.cpu_seconds * 1e6 / self.requests if self.requests else 0.0

    @property
    def errors(self) -> int:
        """Every failed request: non-2xx answers plus connect/read/write/timeout errors."""
        return self.non_2xx + self.socket_errors


@dataclass
class Server:
    """A uvicorn process started by the benchmark."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        """Where it listens."""
        return f"http://{HOST}:{self.port}"

    def log_size(self) -> int:
        """Bytes written to its log so far."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> list[str]:
        """Log lines written after byte `offset`."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its combined stdout/stderr."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ----------------------------------------------------------------------------- environment


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment with the repository on PYTHONPATH (plus `extra`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def warden_cli() -> list[str]:
    """The `warden` command: the console script when installed, else `python -m app.cli`."""
    script = VENV_BIN / "warden"
    return [str(script)] if script.exists() else [str(VENV_BIN / "python"), "-m", "app.cli"]


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a `warden` subcommand; its stdout, or exit with its output on failure."""
    done = subprocess.run(
        [*warden_cli(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        sys.exit(f"bench: `warden {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def pin(pid: int, cpus: set[int]) -> None:
    """Move every thread of process `pid` onto `cpus` (a thread's affinity is its own; threads
    started later inherit their creator's)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task), cpus)


@dataclass(frozen=True)
class Placement:
    """`--pin`: the server under load runs alone on `measured`; the load generator, the
    upstream and the idle servers share `rest`. Without it the scheduler moves the server and
    wrk between the CPUs, and the same run's CPU per request moved by up to 40%."""

    measured: set[int]
    rest: set[int]

    @classmethod
    def choose(cls, enabled: bool) -> Placement | None:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            return None
        return cls({cpus[0]}, set(cpus[1:]))


def wait_quiet(servers: list[Server]) -> float:
    """Wait until none of `servers` uses CPU (see `QUIET_CPU_SHARE`), at most
    `QUIET_MAX_SECONDS`; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < QUIET_MAX_SECONDS:
        before = sum(process_cpu_seconds(s.proc.pid) for s in servers)
        time.sleep(QUIET_WINDOW_SECONDS)
        used = sum(process_cpu_seconds(s.proc.pid) for s in servers) - before
        if used <= QUIET_CPU_SHARE * QUIET_WINDOW_SECONDS:
            break
    return time.monotonic() - started


@contextmanager
def fresh_database(url: str | None, workdir: Path) -> Iterator[str]:
    """The database Warden runs on: a new SQLite file, or a new PostgreSQL database next to the
    one `url` names (created now, dropped afterwards), so every run starts empty."""
    if not url:
        yield f"sqlite:///{workdir}/bench.db"
        return
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        yield url  # any other database is used as given
        return
    import psycopg

    admin = urlunsplit(parts._replace(scheme="postgresql"))
    name = f"warden_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis(url: str) -> None:
    """Empty the Redis database the run uses (its counters and revocations start from zero)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def cpu_count() -> int:
    """What `nproc` prints: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def redact(url: str | None) -> str:
    """A URL with its password hidden."""
    if not url:
        return "none"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def ensure_wrk(mode: str) -> str | None:
    """Path of wrk (installed quietly with apt-get when missing), or None to use Python."""
    if mode == "python":
        return None
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get"):
        print("bench: wrk not found, trying `apt-get install -y wrk` ...", flush=True)
        with suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "wrk"],
                capture_output=True,
                timeout=180,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        found = shutil.which("wrk")
    if found is None and mode == "wrk":
        sys.exit("bench: --loadgen wrk asked for, but wrk is not installed")
    if found is None:
        print("bench: no wrk; falling back to the Python load generator", flush=True)
    return found


def wrk_version(wrk: str) -> str:
    """`wrk 4.1.0` or similar."""
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    match = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return f"wrk {match.group(1)}" if match else "wrk"


# ----------------------------------------------------------------------------- servers


def start_server(name: str, app: list[str], env: dict[str, str], workdir: Path) -> Server:
    """Start one uvicorn process (one worker, no access log) on a free port."""
    port = free_port()
    log = workdir / f"{name}.log"
    command = [str(VENV_BIN / "python"), "-m", "uvicorn", *app]
    command += ["--host", HOST, "--port", str(port), *UVICORN_FLAGS]
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=workdir,  # not the repository: a developer's `.env` must not leak in
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it in order
        )
    return Server(name, proc, port, log)


def wait_ready(server: Server, path: str) -> None:
    """Poll GET `path` until it answers 200; fail with the server's log if it dies or hangs."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            sys.exit(
                f"bench: {server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(server.base_url + path, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    sys.exit(f"bench: {server.name} not ready after {READY_TIMEOUT_SECONDS:.0f}s ({last})")


def stop_servers(servers: list[Server]) -> None:
    """Terminate every server started here (SIGTERM, then SIGKILL after 10 s)."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.terminate()
    for server in servers:
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)


def check_alive(servers: list[Server]) -> None:
    """Fail loudly if a server died during the run."""
    for server in servers:
        if server.proc.poll() is not None:
            sys.exit(
                f"bench: {server.name} died with {server.proc.returncode}:\n{server.log_tail()}"
            )


# ----------------------------------------------------------------------------- seeding


def expect(response: httpx.Response, status: int) -> Any:
    """The JSON body of `response`, or exit with the exact response when the status differs."""
    if response.status_code != status:
        request = response.request
        sys.exit(
            f"bench: {request.method} {request.url} answered {response.status_code} "
            f"(expected {status}):\n{response.text[:2000]}"
        )
    return response.json() if response.content else None


@dataclass
class Seed:
    """What the benchmark made in Warden."""

    tenant: str
    email: str
    decision_slug: str
    forward_slug: str


def login(client: httpx.Client, seed: Seed) -> str:
    """A fresh access token for the bench owner."""
    body = {"email": seed.email, "password": PASSWORD, "tenant": seed.tenant}
    return str(expect(client.post("/api/v1/auth/login", json=body), 200)["access_token"])


def seed_warden(client: httpx.Client, upstream_url: str) -> Seed:
    """A tenant, its owner, two endpoints (decision-only, forwarding), three policies each."""
    suffix = secrets.token_hex(4)
    seed = Seed(
        tenant=f"bench-{suffix}",
        email=f"owner-{suffix}@bench.example",
        decision_slug=f"decide-{suffix}",
        forward_slug=f"forward-{suffix}",
    )
    register = {
        "tenant": seed.tenant,
        "tenant_name": f"Bench {suffix}",
        "email": seed.email,
        "password": PASSWORD,
    }
    expect(client.post("/api/v1/auth/register", json=register), 201)
    auth = {"Authorization": f"Bearer {login(client, seed)}"}
    endpoints = {
        seed.decision_slug: None,
        seed.forward_slug: f"{upstream_url}/echo",
    }
    policies: list[tuple[str, dict[str, Any]]] = [
        ("access", {"mode": "allow", "patterns": ["*@bench.example"]}),
        (
            "rule",
            {
                "rule": "match",
                "eval": "in",
                "f1": "args.auth.role",
                "f2": ["owner", "admin", "member"],
            },
        ),
        (
            "rate_limit",
            # 1_000_000 is the most Warden accepts: never reached at these rates, still counted.
            {"requests_per_period": 1_000_000, "period_seconds": 60, "scope": "per_user"},
        ),
    ]
    for slug, upstream in endpoints.items():
        body: dict[str, Any] = {"name": slug.title(), "slug": slug}
        if upstream is not None:
            body["upstream_url"] = upstream
        else:
            body["host"] = GATEWAY_HOST  # gateway_forward asks about this binding
        expect(client.post("/api/v1/endpoints", json=body, headers=auth), 201)
        for policy_type, configuration in policies:
            policy = {"policy_type": policy_type, "configuration": configuration}
            expect(
                client.post(f"/api/v1/endpoints/{slug}/policies", json=policy, headers=auth), 201
            )
    credential = {"header": "X-Upstream-Key", "value": "bench-secret-value-123"}
    expect(
        client.put(
            f"/api/v1/endpoints/{seed.forward_slug}/credential", json=credential, headers=auth
        ),
        200,
    )
    return seed


def render(text: str, values: dict[str, str]) -> str:
    """`text` with every `{name}` of `values` replaced."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def build_request(target: Target, values: dict[str, str], ports: dict[str, int]) -> HttpRequest:
    """The concrete request of a target."""
    headers = {name: render(value, values) for name, value in target.headers.items()}
    body = b""
    if target.body is not None:
        body = render(json.dumps(target.body, separators=(",", ":")), values).encode()
        headers.setdefault("Content-Type", "application/json")
    if target.bearer:
        headers["Authorization"] = f"Bearer {values['token']}"
    path = render(target.path, values)
    return HttpRequest(target.method, ports[target.server], path, headers, body)


def warm(client: httpx.Client, target: Target, request: HttpRequest) -> None:
    """A few requests before measuring; every one must answer 200."""
    for _ in range(WARM_REQUESTS):
        response = client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        if response.status_code != 200:
            sys.exit(
                f"bench: warm-up of {target.name} ({request.method} {request.path}) answered "
                f"{response.status_code}:\n{dict(response.headers)}\n{response.text[:2000]}"
            )


# ----------------------------------------------------------------------------- wrk

WRK_LUA = """
wrk.method = {method}
wrk.body = {body}
{headers}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  sample = ""
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if sample == "" then
      sample = status .. " " .. string.sub(body or "", 1, 500)
    end
  end
end

function done(summary, latency, requests)
  local bad = 0
  local first = ""
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    local s = thread:get("sample")
    if first == "" and s ~= nil then first = s end
  end
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %.0f %.0f %.3f %.3f %.0f %.0f %.0f %.0f %.0f\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    bad, e.connect, e.read, e.write, e.timeout))
  if first ~= "" then
    io.write("BENCH_SAMPLE " .. (string.gsub(first, "[\\r\\n]", " ")) .. "\\n")
  end
end
"""


def lua_string(value: str | bytes) -> str:
    """A Lua string literal holding exactly `value`."""
    data = value.encode() if isinstance(value, str) else value
    escaped = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data)
    return f'"{escaped}"'


def run_wrk(
    wrk: str,
    name: str,
    request: HttpRequest,
    args: argparse.Namespace,
    connections: int,
    workdir: Path,
) -> Result:
    """Load one target with wrk; figures come from the script's `done()` (µs from wrk)."""
    headers = "\n".join(
        f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in request.headers.items()
    )
    script = workdir / f"{name}.lua"
    script.write_text(
        WRK_LUA.format(
            method=lua_string(request.method),
            body=lua_string(request.body) if request.has_body() else "nil",
            headers=headers,
        )
    )
    threads = max(1, min(args.threads, connections))
    placement: Placement | None = args.placement
    command = ["taskset", "-c", ",".join(map(str, sorted(placement.rest)))] if placement else []
    command += [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{args.duration}s"]
    command += ["--timeout", f"{REQUEST_TIMEOUT_SECONDS:.0f}s", "--latency", "-s", str(script)]
    command.append(request.url)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    match = re.search(r"^BENCH_RESULT (.+)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        sys.exit(f"bench: wrk failed on {name} ({done.returncode}):\n{done.stdout}{done.stderr}")
    requests, duration_us, p50_us, p99_us, non2xx, *socket_errors = (
        float(x) for x in match.group(1).split()
    )
    samples = re.findall(r"^BENCH_SAMPLE (.*)$", done.stdout, re.MULTILINE)
    seconds = duration_us / 1e6
    return Result(
        target=name,
        method=request.method,
        url=request.url,
        loadgen="wrk",
        requests=int(requests),
        seconds=seconds,
        requests_per_s=requests / seconds if seconds else 0.0,
        p50_ms=p50_us / 1000,
        p99_ms=p99_us / 1000,
        non_2xx=int(non2xx),
        socket_errors=int(sum(socket_errors)),
        error_samples=samples,
    )


# ----------------------------------------------------------------------------- Python loadgen


@dataclass
class LoadStats:
    """Shared by the connections of the Python load generator (one event loop)."""

    latencies_ns: list[int] = field(default_factory=list)
    non_2xx: int = 0
    socket_errors: int = 0
    samples: list[str] = field(default_factory=list)

    def sample(self, text: str) -> None:
        """Keep the first few distinct failures."""
        if len(self.samples) < 3 and text not in self.samples:
            self.samples.append(text)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: (status, body, server closes the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), close
    if length is not None:
        return status, await reader.readexactly(length), close
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", close
    return status, await reader.read(), True


async def connection_loop(
    port: int, payload: bytes, deadline: float, read_timeout: float, stats: LoadStats
) -> None:
    """One keep-alive connection sending `payload` back to back until `deadline`."""
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.perf_counter() < deadline:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            started = time.perf_counter_ns()
            writer.write(payload)
            async with asyncio.timeout(read_timeout):
                status, body, close = await read_response(reader)
            stats.latencies_ns.append(time.perf_counter_ns() - started)
            if not 200 <= status < 300:
                stats.non_2xx += 1
                stats.sample(f"{status} {body[:500].decode('utf-8', 'replace')}")
            if close:
                writer.close()
                writer = reader = None
        except (OSError, EOFError, TimeoutError, ValueError, IndexError) as exc:
            stats.socket_errors += 1
            stats.sample(f"socket error: {exc!r}")
            if writer is not None:
                writer.close()
            writer = reader = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


async def loadgen_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `concurrency` connections for `duration` seconds; the figures as a dict."""
    stats = LoadStats()
    payload = bytes.fromhex(spec["payload"])
    started = time.perf_counter()
    deadline = started + float(spec["duration"])
    loops = [
        connection_loop(spec["port"], payload, deadline, spec["timeout"], stats)
        for _ in range(int(spec["concurrency"]))
    ]
    await asyncio.gather(*loops)
    seconds = time.perf_counter() - started
    latencies = sorted(stats.latencies_ns)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "p50_ms": percentile(latencies, 50) / 1e6,
        "p99_ms": percentile(latencies, 99) / 1e6,
        "non_2xx": stats.non_2xx,
        "socket_errors": stats.socket_errors,
        "samples": stats.samples,
    }


def loadgen_worker() -> None:
    """Entry point of the load-generator process: spec JSON on stdin, figures JSON on stdout."""
    spec = json.load(sys.stdin)
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        figures = runner.run(loadgen_main(spec))
    json.dump(figures, sys.stdout)


def run_python_loadgen(
    name: str, request: HttpRequest, args: argparse.Namespace, connections: int
) -> Result:
    """Load one target with the Python generator, in a process of its own."""
    spec = {
        "port": request.port,
        "payload": request.raw().hex(),
        "duration": args.duration,
        "concurrency": connections,
        "timeout": REQUEST_TIMEOUT_SECONDS,
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--loadgen-worker"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=args.duration + REQUEST_TIMEOUT_SECONDS + 60,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench: load generator failed on {name}:\n{done.stdout}{done.stderr}")
    figures = json.loads(done.stdout)
    seconds = float(figures["seconds"])
    return Result(
        target=name,
        method=request.method,
        url=request.url,
        loadgen="python",
        requests=int(figures["requests"]),
        seconds=seconds,
        requests_per_s=figures["requests"] / seconds if seconds else 0.0,
        p50_ms=float(figures["p50_ms"]),
        p99_ms=float(figures["p99_ms"]),
        non_2xx=int(figures["non_2xx"]),
        socket_errors=int(figures["socket_errors"]),
        error_samples=list(figures["samples"]),
    )


# ----------------------------------------------------------------------------- report


def summarise_log(lines: list[str]) -> list[str]:
    """Warden's JSON log lines grouped by event/code/status, most frequent first."""
    counts: dict[str, int] = {}
    for line in lines:
        try:
            entry = json.loads(line)
            keys = ("level", "event", "code", "status", "error", "exc_info")
            key = " ".join(f"{k}={str(entry[k]).strip()}" for k in keys if entry.get(k) is not None)
        except (ValueError, TypeError):
            key = line.strip()[:300]
        if key:
            counts[key] = counts.get(key, 0) + 1
    return [f"{n}x {key}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def ratio_text(value: float | None) -> str:
    """`0.62x`, 3 decimals below 0.1x (where 2 would hide the figure), `n/a` without a baseline."""
    if value is None:
        return "n/a"
    return f"{value:.{2 if value >= 0.1 else 3}f}x"


def medians(results: list[Result]) -> list[Result]:
    """One result per (connections, target), in first-seen order: the median of each figure over
    the rounds (ratios: of each round's own ratio), failures summed, CPU over all requests."""
    groups: dict[tuple[int, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.connections, r.target), []).append(r)
    merged = []
    for group in groups.values():
        first = group[0]

        def median_of(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        merged.append(
            replace(
                first,
                requests=sum(r.requests for r in group),
                seconds=sum(r.seconds for r in group),
                requests_per_s=statistics.median(r.requests_per_s for r in group),
                p50_ms=statistics.median(r.p50_ms for r in group),
                p99_ms=statistics.median(r.p99_ms for r in group),
                non_2xx=sum(r.non_2xx for r in group),
                socket_errors=sum(r.socket_errors for r in group),
                error_samples=[s for r in group for s in r.error_samples][:5],
                cpu_seconds=sum(r.cpu_seconds for r in group),
                ratio_to_hello=median_of([r.ratio_to_hello for r in group]),
                p99_ratio_to_hello=median_of([r.p99_ratio_to_hello for r in group]),
                server_log=[line for r in group for line in r.server_log],
                round=0,
            )
        )
    return merged


def as_json(r: Result) -> dict[str, Any]:
    """One result as the JSON output holds it."""
    return {**asdict(r), "errors": r.errors, "cpu_us_per_request": r.cpu_us_per_request}


def print_report(results: list[Result], context: dict[str, Any], out: IO[str]) -> None:
    """The setup it was measured on, the failures and Warden's log notes, then the table."""
    print(file=out)
    print(f"machine:     {context['nproc']} CPUs (nproc), {context['platform']}", file=out)
    print(f"database:    {context['database']}", file=out)
    print(f"redis:       {context['redis']}", file=out)
    print(
        f"load:        {context['loadgen']}, {context['connections']} connections, "
        f"{context['duration']} s per target, a request over {REQUEST_TIMEOUT_SECONDS:.0f} s "
        "is a failure",
        file=out,
    )
    if context.get("rounds", 1) > 1:
        print(
            f"rounds:      {context['rounds']}; each figure is the median over the rounds, "
            "failures their sum, CPU µs/req over all of them",
            file=out,
        )
    for r in results:
        if r.errors:
            print(
                f"\n!!! {r.target} at {r.connections} connections: {r.errors} requests "
                f"FAILED ({r.non_2xx} non-2xx, "
                f"{r.socket_errors} socket errors or timeouts)",
                file=out,
            )
            for sample in r.error_samples:
                print(f"!!!   {sample}", file=out)
    for r in results:
        if r.server_log:
            print(f"\nnote: Warden logged while {r.target} ran at {r.connections}:", file=out)
            for entry in r.server_log[:5]:
                print(f"  {entry}", file=out)
    if any(r.server_log for r in results) and context["loadgen"].startswith("wrk"):
        print(
            "note: wrk drops its connections mid-request when the duration ends; Warden logs "
            "those aborted requests too (compare with --loadgen python, which lets them finish)",
            file=out,
        )
    header = (
        f"{'conns':>5} {'route':<16} {'req/s':>9} {'×hello':>7} {'p99 ms':>8} "  # noqa: RUF001
        f"{'×hello p99':>10} {'CPU µs/req':>10} {'failures':>8}"  # noqa: RUF001
    )
    print(file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        print(
            f"{r.connections:>5} {r.target:<16} {r.requests_per_s:>9.1f} "
            f"{ratio_text(r.ratio_to_hello):>7} {r.p99_ms:>8.2f} "
            f"{ratio_text(r.p99_ratio_to_hello):>10} {r.cpu_us_per_request:>10.0f} "
            f"{r.errors:>8}",
            file=out,
        )


def parse_connections(text: str) -> list[int]:
    """`16,32,64` as a list of positive connection counts."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connection counts must be at least 1")
    return counts


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=[16, 32, 64],
        help="comma-separated connection counts, every target at each (default 16,32,64)",
    )
    parser.add_argument(
        "--concurrency", type=int, help="one connection count (same as --connections N)"
    )
    parser.add_argument("--duration", type=int, default=6, help="seconds per target (default 6)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="sweeps of every count and target; the table shows each figure's median over them\n"
        "(ratios: the median of each round's ratio to that round's hello)",
    )
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    parser.add_argument(
        "--loadgen", choices=["auto", "wrk", "python"], default="auto", help="default: wrk if any"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, min(4, cpu_count() // 2)),
        help="wrk threads (default: half the CPUs, at least 1)",
    )
    parser.add_argument(
        "--targets",
        help="comma-separated subset of: " + ", ".join(t.name for t in TARGETS),
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the scheduler place processes (default: the server under load alone on one\n"
        "CPU, wrk and every other process on the others)",
    )
    args = parser.parse_args(argv)
    args.placement = Placement.choose(args.pin)
    if args.concurrency is not None:
        if args.concurrency < 1:
            parser.error("--concurrency must be at least 1")
        args.connections = [args.concurrency]
    if args.duration < 1:
        parser.error("--duration must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def selected_targets(args: argparse.Namespace) -> list[Target]:
    """The targets to load, in table order."""
    if not args.targets:
        return list(TARGETS)
    wanted = {name.strip() for name in args.targets.split(",") if name.strip()}
    unknown = wanted - {t.name for t in TARGETS}
    if unknown:
        sys.exit(f"bench: unknown targets: {', '.join(sorted(unknown))}")
    return [t for t in TARGETS if t.name in wanted]


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so `finally` blocks stop the servers."""

    def handler(signum: int, _frame: object) -> None:
        print("bench: terminated; stopping servers", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_all(
    warden_env: dict[str, str], workdir: Path, servers: list[Server]
) -> dict[str, Server]:
    """Warden, the echo upstream and the three references, each its own uvicorn process."""
    warden = start_server("warden", ["--app-dir", str(ROOT), "app.main:app"], warden_env, workdir)
    servers.append(warden)
    upstream_app = ["--app-dir", str(ROOT), "--factory", "tests.support.servers:upstream_app"]
    upstream = start_server("upstream", upstream_app, python_env(), workdir)
    servers.append(upstream)
    scripts = ["--app-dir", str(ROOT / "scripts")]
    started = {"warden": warden, "upstream": upstream}
    references = {"hello": "bench_hello:app", "raw": "bench_hello:raw_app"}
    references["proxy"] = "bench_hello:proxy_app"
    env = python_env({"BENCH_UPSTREAM_URL": upstream.base_url})
    for name, app in references.items():
        started[name] = start_server(name, [*scripts, app], env, workdir)
        servers.append(started[name])
    wait_ready(warden, "/health")
    wait_ready(upstream, "/echo")
    wait_ready(started["hello"], "/hello")
    wait_ready(started["raw"], "/hello")
    return started


def measure(
    target: Target,
    request: HttpRequest,
    server: Server,
    args: argparse.Namespace,
    connections: int,
    wrk: str | None,
    workdir: Path,
) -> Result:
    """Load one target once; its figures with the serving process's CPU time."""
    placement: Placement | None = args.placement
    if placement is not None:
        pin(server.proc.pid, placement.measured)
    try:
        cpu_before = process_cpu_seconds(server.proc.pid)
        result = (
            run_wrk(wrk, target.name, request, args, connections, workdir)
            if wrk
            else run_python_loadgen(target.name, request, args, connections)
        )
        time.sleep(0.5)  # let aborted requests finish (and log) before reading the clock
        result.cpu_seconds = process_cpu_seconds(server.proc.pid) - cpu_before
    finally:
        if placement is not None:
            pin(server.proc.pid, placement.rest)
    result.connections = connections
    return result


def main(argv: list[str]) -> int:
    """Start the servers, seed, load every target at every connection count, report; servers
    always stopped, the bench database always dropped."""
    import httpx

    args = parse_args(argv)
    targets = selected_targets(args)
    wrk = ensure_wrk(args.loadgen)
    loadgen = wrk_version(wrk) if wrk else "python asyncio load generator"
    if wrk:
        threads = max(1, min(args.threads, min(args.connections)))
        loadgen += f" ({threads} thread{'s' if threads > 1 else ''})"
    workdir = Path(tempfile.mkdtemp(prefix="warden-bench-"))
    print(f"bench: workdir {workdir}", flush=True)
    if args.redis_url:
        flush_redis(args.redis_url)
    servers: list[Server] = []
    results: list[Result] = []
    with fresh_database(args.database_url, workdir) as database_url:
        warden_env = python_env(
            {
                "DATABASE_URL": database_url,
                "GLOBAL_RATE_LIMIT": "100000000/minute",
                "LOGIN_RATE_LIMIT": "1000/minute",
                "UPSTREAM_ALLOWED_HOSTS": HOST,
                "LOG_LEVEL": "warning",
                "ALLOW_SIGNUP": "true",
            }
        )
        if args.redis_url:
            warden_env["REDIS_URL"] = args.redis_url
        else:
            warden_env.pop("REDIS_URL", None)
        warden_env["WARDEN_MASTER_KEY"] = run_cli(["keys", "generate-master"], warden_env, workdir)
        run_cli(["migrate"], warden_env, workdir)
        try:
            with terminate_as_exit():
                started = start_all(warden_env, workdir, servers)
                if args.placement is not None:
                    for server in servers:
                        pin(server.proc.pid, args.placement.rest)
                warden = started["warden"]
                ports = {name: server.port for name, server in started.items()}
                with httpx.Client(base_url=warden.base_url, timeout=30) as client:
                    seed = seed_warden(client, started["upstream"].base_url)
                    print(f"bench: seeded tenant {seed.tenant} ({seed.email})", flush=True)
                    sweeps = [
                        (round_, connections)
                        for round_ in range(1, args.rounds + 1)
                        for connections in args.connections
                    ]
                    for round_, connections in sweeps:
                        for target in targets:
                            # A fresh token per target: long runs outlive a 900 s token.
                            token = login(client, seed) if target.bearer else ""
                            values = {
                                "decision_slug": seed.decision_slug,
                                "forward_slug": seed.forward_slug,
                                "token": token,
                            }
                            request = build_request(target, values, ports)
                            warm(client, target, request)
                            time.sleep(SETTLE_SECONDS)
                            waited = wait_quiet(servers)
                            if waited > 2 * QUIET_WINDOW_SECONDS:
                                print(f"bench: {waited:.1f} s until every server idled", flush=True)
                            print(
                                f"bench: {target.name} at {connections}"
                                + (f" (round {round_})" if args.rounds > 1 else "")
                                + f": {request.method} {request.path} ...",
                                flush=True,
                            )
                            log_offset = warden.log_size()
                            server = started[target.server]
                            result = measure(
                                target, request, server, args, connections, wrk, workdir
                            )
                            result.server_log = summarise_log(warden.log_since(log_offset))
                            result.round = round_
                            results.append(result)
                            check_alive(servers)
        finally:
            stop_servers(servers)

    for r in results:
        hello = next(
            (
                h
                for h in results
                if h.target == "hello" and (h.connections, h.round) == (r.connections, r.round)
            ),
            None,
        )
        if hello is not None:
            r.ratio_to_hello = r.requests_per_s / hello.requests_per_s
            r.p99_ratio_to_hello = r.p99_ms / hello.p99_ms if hello.p99_ms else None
    rounds = results
    results = medians(results) if args.rounds > 1 else results
    context = {
        "nproc": cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "database": (
            f"fresh database next to {redact(args.database_url)}"
            if args.database_url
            else "SQLite (fresh file)"
        ),
        "redis": (
            f"{redact(args.redis_url)} (flushed)" if args.redis_url else "none (in-process limiter)"
        ),
        "loadgen": loadgen,
        "connections": ",".join(str(c) for c in args.connections),
        "duration": args.duration,
        "rounds": args.rounds,
    }
    print_report(results, context, sys.stdout)
    if args.json:
        payload = {
            **context,
            "results": [as_json(r) for r in results],
        }
        if args.rounds > 1:
            payload["rounds_results"] = [as_json(r) for r in rounds]
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nbench: figures written to {args.json}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loadgen-worker"]:
        loadgen_worker()
    else:
        try:
            sys.exit(main(sys.argv[1:]))
        except KeyboardInterrupt:
            sys.exit("bench: interrupted; servers stopped")
