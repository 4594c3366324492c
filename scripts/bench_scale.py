"""Scale-out benchmark (issue 17, docs/benchmark.md "Scaling out"): throughput and added latency of TokenHub
with N = 1, 2, 4, ... processes sharing Redis (and PostgreSQL), in two shapes:

  workers    `tokenhub serve --workers N`: one port, N processes (SO_REUSEPORT), one data directory
  replicas   N separate `tokenhub serve` processes, each on its own port and data directory, sharing Redis (and
             the PostgreSQL configuration store when given); the load generator spreads connections over them

plus the single-process embedded baseline (no Redis, no PostgreSQL) and the fake provider direct. Everything
runs on 127.0.0.1: a private `redis-server` on a free port (or --redis-url, with a fresh key prefix per run),
a fresh PostgreSQL database per run on --postgres-url's server (created and dropped), a fast fake provider in
its own process(es) (scripts/bench_fake_provider.py) and the load generator (scripts/bench_load.py: wrk when
installed, else a Python loop) in its own process. When the machine has the cores, servers, the fake
provider + Redis and the load generator are pinned apart with `taskset`; the output says when it could not.

For each row: a warm-up, then throughput (req/s at --connections for --duration seconds), then the p50 at one
connection for --latency-duration seconds through TokenHub and direct to the fake provider (added = the
difference). The API key has a monthly budget and per-minute limits, so every shared check is on the path.
Ctrl-C (or SIGTERM) stops every process the benchmark started and removes its temporary directory.

    python scripts/bench_scale.py                                   # both shapes, N = 1, 2, 4, ... cores
    python scripts/bench_scale.py --shape replicas --max-n 2 --postgres-url postgresql://postgres@127.0.0.1/test
    python scripts/bench_scale.py --max-n 1 --duration 2 --latency-duration 1 --warmup 0 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from scripts.bench_load import RESULT_TAG, have_wrk  # noqa: E402
from scripts.server_process import free_port  # noqa: E402

MODEL = "bench-model"
KEY_NAME = "bench"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, this is a benchmark request."}]}
START_SECS = 120.0  # a process's start on a loaded machine; every wait below is bounded
STOP_SECS = 60.0
FAKE_KEY_ENV = "BENCH_FAKE_PROVIDER_KEY"


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


# --- processes -----------------------------------------------------------------------------------------------


@dataclass
class Procs:
    """Every process the benchmark started, stopped in reverse order (servers before what they depend on)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: list[str], log: Path, cpus: str | None, **kwargs: Any) -> subprocess.Popen[bytes]:
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        with log.open("ab") as out:
            # Its own process group: a terminal's Ctrl-C reaches only the benchmark, which stops them in order.
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, process_group=0, **kwargs)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # TokenHub drains; a supervisor stops its workers in order
            try:
                proc.wait(timeout=STOP_SECS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- cores ---------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Which cores run what; None everywhere when nothing is pinned."""

    servers: list[int] | None
    aux: list[int] | None  # the fake provider and the private Redis
    load: list[int] | None
    note: str

    @staticmethod
    def plan(max_n: int, pin: bool) -> Layout:
        cores = sorted(os.sched_getaffinity(0))
        if not pin:
            return Layout(None, None, None, "not pinned (--no-pin): every process may run on every core")
        if shutil.which("taskset") is None:
            return Layout(None, None, None, "not pinned: taskset is not installed (Debian package util-linux)")
        spare = len(cores) - max_n
        if spare >= 2:
            aux_n = max(1, spare // 2)
            servers, aux, load = cores[:max_n], cores[max_n : max_n + aux_n], cores[max_n + aux_n :]
            note = (
                f"pinned: servers on cores {_cpus(servers)}, fake provider + Redis on {_cpus(aux)},"
                f" load generator on {_cpus(load)}"
            )
            return Layout(servers, aux, load, note)
        if spare == 1:
            servers, rest = cores[:max_n], cores[max_n:]
            note = (
                f"pinned: servers on cores {_cpus(servers)}; the load generator shares core {_cpus(rest)} with the"
                " fake provider and Redis"
            )
            return Layout(servers, rest, rest, note)
        return Layout(
            None,
            None,
            None,
            f"NOT pinned: {len(cores)} core(s) cannot hold {max_n} server process(es) apart from the load generator:"
            " servers, load generator, fake provider and Redis share every core",
        )

    def server_cpus(self, n: int) -> str | None:
        return None if self.servers is None else _cpus(self.servers[:n])

    @property
    def aux_cpus(self) -> str | None:
        return None if self.aux is None else _cpus(self.aux)

    @property
    def load_cpus(self) -> str | None:
        return None if self.load is None else _cpus(self.load)


def _cpus(cores: list[int]) -> str:
    return ",".join(str(c) for c in cores)


def counts(max_n: int) -> list[int]:
    """1, 2, 4, ... up to max_n, and max_n itself."""
    ns, n = [], 1
    while n < max_n:
        ns.append(n)
        n *= 2
    return [*ns, max_n]


# --- HTTP ----------------------------------------------------------------------------------------------------


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request on a new connection (so SO_REUSEPORT may pick another worker); (0, None) when refused."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def wait_until(what: str, check: Any, procs: list[subprocess.Popen[bytes]], log: Path) -> Any:
    """Poll `check()` until it returns something truthy, bounded; fail early when a process exited."""
    deadline = time.monotonic() + START_SECS
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(f"{what}: the process exited with {proc.returncode}:\n{log_tail(log)}")
        if found := check():
            return found
        time.sleep(0.1)
    raise BenchError(f"{what}: not within {START_SECS:g} s:\n{log_tail(log)}")


# --- the backing services ------------------------------------------------------------------------------------


class Redis:
    """A private redis-server (nothing on disk), or the given one with a fresh key prefix per run."""

    def __init__(self, procs: Procs, workdir: Path, url: str | None, cpus: str | None) -> None:
        self.procs, self.workdir, self.external = procs, workdir, url
        self.prefixes: list[str] = []
        if url:
            self.url = url
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                raise BenchError("redis-server is not installed (Debian package redis-server); or pass --redis-url")
            port = free_port()
            self.url = f"redis://127.0.0.1:{port}/0"
            log = workdir / "redis.log"
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            proc = procs.start([*command, "--dir", str(workdir)], log, cpus)
            wait_until("redis-server start", lambda: self._ping(), [proc], log)
        if not self._ping():
            raise BenchError(f"Redis at {_redact(self.url)} does not answer PING")

    def _ping(self) -> bool:
        import redis  # the venv has it (TokenHub's dependency)

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def prefix(self) -> str:
        prefix = f"bench-scale-{uuid.uuid4().hex[:10]}"
        self.prefixes.append(prefix)
        return prefix

    def cleanup(self) -> None:
        """On a Redis we did not start, delete our prefixes' keys (and nothing else)."""
        if not self.external or not self.prefixes:
            return
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            for prefix in self.prefixes:
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
        except (redis.RedisError, OSError) as exc:
            print(f"warning: could not delete the benchmark's Redis keys: {type(exc).__name__}", file=sys.stderr)
        finally:
            client.close()


class Postgres:
    """Fresh databases on a PostgreSQL server, dropped at the end; off when this build does not use it."""

    def __init__(self, admin_url: str | None) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []
        self.note = "PostgreSQL: not used (no --postgres-url): each replica keeps its configuration in its SQLite"
        self.enabled = False
        if not admin_url:
            return
        if urllib.parse.urlsplit(admin_url).scheme not in ("postgresql", "postgres"):
            raise BenchError("--postgres-url must be a URL: postgresql://user@host:5432/db")
        from pipeline.settings import Settings

        if "database_url" not in Settings.model_fields:
            self.note = "PostgreSQL: skipped: this build has no TOKENHUB_DATABASE_URL setting"
            return
        import psycopg

        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL at {_redact(admin_url)} is unreachable: {type(exc).__name__}") from None
        self.enabled = True
        self.note = "PostgreSQL: one fresh database per run"

    def fresh(self) -> str | None:
        if not self.enabled:
            return None
        import psycopg

        assert self.admin_url is not None
        name = f"tokenhub_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return urllib.parse.urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()

    def check_used(self, url: str) -> bool:
        """Whether TokenHub created its tables in the run's database; if not, later runs go without it."""
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            tables = int(row.fetchone()[0])  # type: ignore[index]
        if tables == 0:
            self.enabled = False
            self.note = (
                "PostgreSQL: skipped: this build has the TOKENHUB_DATABASE_URL setting but did not create its tables"
                " there (the PostgreSQL configuration store is not merged yet): the configuration stays in SQLite"
            )
        return tables > 0

    def cleanup(self) -> None:
        if not self.created:
            return
        import psycopg

        assert self.admin_url is not None
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
                for name in self.created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as exc:
            print(f"warning: could not drop {self.created}: {type(exc).__name__}", file=sys.stderr)


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


# --- TokenHub ------------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """TokenHub processes serving `ports`, with the API key each port takes."""

    label: str
    shape: str
    n: int
    procs: list[subprocess.Popen[bytes]]
    ports: list[int]
    keys: list[str]
    redis: bool
    postgres: bool

    def targets(self) -> list[dict[str, Any]]:
        return [
            {"url": f"http://127.0.0.1:{port}/v1/chat/completions", "headers": {"Authorization": f"Bearer {key}"}}
            for port, key in zip(self.ports, self.keys, strict=True)
        ]


class Hubs:
    """Starts TokenHub deployments: a config file gives every process the fake provider, the model and the key."""

    def __init__(self, args: argparse.Namespace, workdir: Path, procs: Procs, layout: Layout, fake_url: str) -> None:
        self.args, self.workdir, self.procs, self.layout = args, workdir, procs, layout
        self.config = workdir / "tokenhub.json"
        key = {"name": KEY_NAME, "monthly_budget_usd": 1_000_000, "rate_limit_rpm": 10_000_000, "rate_limit_tpm": 10**9}
        config = {
            "providers": [{"id": "fake", "type": "openai", "base_url": fake_url, "api_key_env": FAKE_KEY_ENV}],
            "models": [
                {"id": MODEL, "provider_id": "fake", "weight": 5, "input_per_1k": 0.001, "output_per_1k": 0.002}
            ],
            "api_keys": [key],
        }
        self.config.write_text(json.dumps(config))
        self.runs = 0

    def _env(self, data_dir: Path, port: int, redis_url: str, prefix: str, database_url: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")}
        env |= {
            "TOKENHUB_DATA_DIR": str(data_dir),
            "TOKENHUB_LISTEN_ADDR": f"127.0.0.1:{port}",
            "TOKENHUB_ADMIN_TOKEN": secrets.token_hex(16),
            "TOKENHUB_CONFIG_FILE": str(self.config),
            "TOKENHUB_CREDENTIALS_FILE": str(self.workdir / "no-credentials"),
            "TOKENHUB_RATE_LIMIT_RPS": "1000000",  # all the load comes from 127.0.0.1
            "TOKENHUB_RATE_LIMIT_BURST": "1000000",
            "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",
            "TOKENHUB_HOST_API_KEY_ENABLED": "false",
            "TOKENHUB_CONTAINER": "false",
            "TOKENHUB_LOG_LEVEL": self.args.log_level,
            "TOKENHUB_SHUTDOWN_DRAIN_SECS": "5",
            FAKE_KEY_ENV: "sk-bench",
        }
        if redis_url:
            env |= {
                "TOKENHUB_REDIS_URL": redis_url,
                "TOKENHUB_REDIS_PREFIX": prefix,
                "TOKENHUB_REDIS_TIMEOUT_MS": "1000",
            }
        if database_url:
            env["TOKENHUB_DATABASE_URL"] = database_url
        return env

    def start(self, shape: str, n: int, redis: Redis | None, postgres: Postgres) -> Deployment:
        self.runs += 1
        run_dir = self.workdir / f"{self.runs}-{shape}-{n}"
        run_dir.mkdir()
        label = "embedded" if shape == "embedded" else f"{shape} N={n}"
        redis_url = redis.url if redis is not None else ""
        prefix = redis.prefix() if redis is not None else ""
        database_url = postgres.fresh() if shape != "embedded" else None
        cpus = self.layout.server_cpus(n)
        deployment = Deployment(label, shape, n, [], [], [], redis is not None, database_url is not None)
        processes = 1 if shape in ("embedded", "workers") else n
        for index in range(processes):
            port = free_port()
            data_dir = run_dir / f"data-{index}"
            if index > 0:  # replicas share the secret key that seals provider keys (docs/scaling.md)
                data_dir.mkdir(mode=0o700)
                shutil.copy2(run_dir / "data-0" / ".secret-key", data_dir / ".secret-key")
            log = run_dir / f"tokenhub-{index}.log"
            command = [sys.executable, "-m", "pipeline", "serve"]
            if shape == "workers":
                command += ["--workers", str(n)]
            env = self._env(data_dir, port, redis_url, prefix, database_url)
            proc = self.procs.start(command, log, cpus, cwd=ROOT, env=env)
            deployment.procs.append(proc)
            deployment.ports.append(port)
            # One at a time: the first applies the config file (with PostgreSQL: for every replica).
            self._ready(deployment, proc, port, log, redis is not None, n if shape == "workers" else 1)
            deployment.keys.append(self._key(data_dir, deployment))
            if database_url and index == 0 and not postgres.check_used(database_url):
                print(postgres.note, flush=True)
                deployment.postgres = False
                database_url = None  # the other replicas of this run keep their own SQLite too
        for port, key in zip(deployment.ports, deployment.keys, strict=True):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {key}"}
            wait_until(
                f"{label}: a chat request through :{port}",
                lambda url=url, headers=headers: http("POST", url, BODY, headers)[0] == 200,
                deployment.procs,
                run_dir / "tokenhub-0.log",
            )
        return deployment

    def _ready(
        self, deployment: Deployment, proc: subprocess.Popen[bytes], port: int, log: Path, redis: bool, workers: int
    ) -> None:
        """Listening, the Redis link up, and (workers) every worker seen answering /healthz."""
        seen: set[int] = set()

        def check() -> bool:
            status, health = http("GET", f"http://127.0.0.1:{port}/healthz")
            if status == 0 or not isinstance(health, dict):
                return False
            if redis and not health.get("shared_state", {}).get("up"):
                return False
            if workers > 1:
                seen.add(int(health.get("worker", {}).get("index", -1)))
                return seen >= set(range(workers))
            return True

        wait_until(f"{deployment.label}: start on :{port}", check, [proc], log)

    def _key(self, data_dir: Path, deployment: Deployment) -> str:
        """The key the config file created: in this data directory's keys file, or (a shared PostgreSQL store,
        where the first replica created it) the first replica's."""
        keys_file = data_dir / "config-keys.json"
        with contextlib.suppress(OSError, ValueError):
            key = json.loads(keys_file.read_text()).get(KEY_NAME)
            if key:
                return str(key)
        if deployment.keys:
            return deployment.keys[0]
        raise BenchError(f"{deployment.label}: the config file's API key is not in {keys_file}")


# --- measuring -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    shape: str
    processes: int
    redis: bool
    postgres: bool
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    c1_p50_ms: float
    direct_c1_p50_ms: float
    added_ms: float
    scale: float | None = None  # rps / this shape's rps at N = 1


class Loader:
    """Runs scripts/bench_load.py in its own (pinned) process."""

    def __init__(self, args: argparse.Namespace, workdir: Path, procs: Procs, layout: Layout) -> None:
        self.args, self.workdir, self.procs, self.layout = args, workdir, procs, layout
        self.engine = args.loadgen if args.loadgen != "auto" else ("wrk" if have_wrk() else "python")
        if self.engine == "wrk" and not have_wrk():
            raise BenchError("--loadgen wrk: wrk is not installed (Debian package wrk)")
        self.threads = len(layout.load) if layout.load is not None else 1
        self.count = 0

    def run(self, targets: list[dict[str, Any]], connections: int, seconds: float) -> dict[str, Any]:
        self.count += 1
        spec_dir = self.workdir / f"load-{self.count}"
        spec_dir.mkdir(mode=0o700)
        spec = {
            "engine": self.engine,
            "seconds": seconds,
            "connections": connections,
            "threads": self.threads,
            "body": BODY,
            "targets": targets,
        }
        spec_file = spec_dir / "spec.json"
        spec_file.write_text(json.dumps(spec))
        spec_file.chmod(0o600)
        log = spec_dir / "load.log"
        command = [sys.executable, str(ROOT / "scripts" / "bench_load.py"), "--spec", str(spec_file)]
        proc = self.procs.start(command, log, self.layout.load_cpus, cwd=ROOT)
        try:
            proc.wait(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the load generator did not finish within {seconds + 90:g} s") from None
        finally:
            self.procs.stop(proc)
        lines = [line for line in log.read_text().splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            raise BenchError(f"the load generator failed (exit {proc.returncode}):\n{log_tail(log)}")
        return json.loads(lines[-1][len(RESULT_TAG) :])


def fake_target(port: int) -> list[dict[str, Any]]:
    return [{"url": f"http://127.0.0.1:{port}/v1/chat/completions", "headers": {}}]


def measure(args: argparse.Namespace, loader: Loader, deployment: Deployment | None, fake_port: int) -> Row:
    direct = fake_target(fake_port)
    targets = deployment.targets() if deployment is not None else direct
    connections = max(args.connections, len(targets))
    if args.warmup > 0:
        loader.run(targets, connections, args.warmup)
    load = loader.run(targets, connections, args.duration)
    one = loader.run(targets[:1], 1, args.latency_duration)  # one connection: one replica / one worker
    baseline = one if deployment is None else loader.run(direct, 1, args.latency_duration)
    return Row(
        label=deployment.label if deployment is not None else "direct (fake provider)",
        shape=deployment.shape if deployment is not None else "direct",
        processes=deployment.n if deployment is not None else 0,
        redis=deployment.redis if deployment is not None else False,
        postgres=deployment.postgres if deployment is not None else False,
        rps=load["rps"],
        p50_ms=load["p50_ms"],
        p99_ms=load["p99_ms"],
        errors=load["errors"] + one["errors"],
        requests=load["requests"],
        c1_p50_ms=one["p50_ms"],
        direct_c1_p50_ms=baseline["p50_ms"],
        added_ms=one["p50_ms"] - baseline["p50_ms"],
    )


def table(rows: list[Row]) -> str:
    head = f"{'row':24} {'procs':>5} {'redis':>5} {'pg':>3} {'rps':>8} {'p50':>7} {'p99':>7} {'errors':>6}"
    head += f" {'c1_p50':>7} {'direct':>7} {'+ms':>6} {'scale':>5}"
    lines = [head]
    for r in rows:
        scale = "" if r.scale is None else f"{r.scale:.2f}"
        lines.append(
            f"{r.label:24} {r.processes or '-':>5} {'yes' if r.redis else 'no':>5} {'yes' if r.postgres else 'no':>3}"
            f" {r.rps:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.errors:6d}"
            f" {r.c1_p50_ms:7.3f} {r.direct_c1_p50_ms:7.3f} {r.added_ms:6.3f} {scale:>5}"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, procs: Procs) -> dict[str, Any]:
    layout = Layout.plan(args.max_n, pin=not args.no_pin)
    print(layout.note, flush=True)
    shapes = ["workers", "replicas"] if args.shape == "both" else [args.shape]
    redis = postgres = None
    try:
        postgres = Postgres(args.postgres_url)
        print(postgres.note, flush=True)
        redis = Redis(procs, workdir, args.redis_url, layout.aux_cpus)
        print(f"Redis: {'the given server' if args.redis_url else 'a private redis-server'}, fresh prefix per run")
        fake_port = free_port()
        fake_log = workdir / "fake-provider.log"
        fake_cmd = [sys.executable, str(ROOT / "scripts" / "bench_fake_provider.py"), "--port", str(fake_port)]
        fakes = [
            procs.start([*fake_cmd, "--reuse-port"], fake_log, layout.aux_cpus, cwd=workdir)
            for _ in range(args.fake_procs)
        ]
        fake_chat = f"http://127.0.0.1:{fake_port}/v1/chat/completions"
        wait_until("the fake provider", lambda: http("POST", fake_chat, BODY)[0] == 200, fakes, fake_log)
        loader = Loader(args, workdir, procs, layout)
        print(
            f"load generator: {loader.engine}; {args.connections} connections for {args.duration:g} s per row,"
            f" one connection for {args.latency_duration:g} s for the latency",
            flush=True,
        )
        hubs = Hubs(args, workdir, procs, layout, f"http://127.0.0.1:{fake_port}")
        rows: list[Row] = []
        print(table(rows), flush=True)  # the header; each row as it is measured
        plan = [("embedded", 1)] + [(shape, n) for shape in shapes for n in counts(args.max_n)]
        for shape, n in plan:
            deployment = hubs.start(shape, n, None if shape == "embedded" else redis, postgres)
            try:
                row = measure(args, loader, deployment, fake_port)
            finally:
                for proc in deployment.procs:
                    procs.stop(proc)
            first = next((r for r in rows if r.shape == shape and r.processes == 1), None)
            if shape != "embedded" and first is not None and first.rps > 0:
                row.scale = row.rps / first.rps
            elif shape != "embedded":
                row.scale = 1.0
            rows.append(row)
            print(table(rows).splitlines()[-1], flush=True)
        # The fake provider alone, last (what one connection costs direct is measured with every row anyway).
        rows.insert(0, measure(args, loader, None, fake_port))
        print(table(rows).splitlines()[1], flush=True)
        return {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cores": len(os.sched_getaffinity(0)),
            "pinning": layout.note,
            "postgres": postgres.note,
            "loadgen": loader.engine,
            "connections": args.connections,
            "duration_secs": args.duration,
            "latency_duration_secs": args.latency_duration,
            "fake_provider_processes": args.fake_procs,
            "redis_prefixes": redis.prefixes,  # deleted at the end (on a Redis the benchmark did not start)
            "postgres_databases": postgres.created,  # dropped at the end
            "rows": [asdict(r) for r in rows],
        }
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if redis is not None:
            redis.cleanup()
        if postgres is not None:
            postgres.cleanup()


def main(argv: list[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["workers", "replicas", "both"], default="both")
    parser.add_argument("--max-n", type=int, default=cores, help=f"largest N (default: the cores, {cores})")
    parser.add_argument("--connections", type=int, default=32, help="connections of the throughput runs")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each throughput run")
    parser.add_argument("--latency-duration", type=float, default=5.0, help="seconds of each one-connection run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each row (0 = none)")
    parser.add_argument("--redis-url", help="use this Redis (fresh key prefix per run) instead of a private one")
    parser.add_argument(
        "--postgres-url", help="a PostgreSQL server (any database) where a fresh database is created per run"
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installed")
    parser.add_argument("--fake-procs", type=int, default=1, help="processes of the fake provider (one port)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores with taskset")
    parser.add_argument("--log-level", default="warning", help="TokenHub's TOKENHUB_LOG_LEVEL")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.max_n < 1 or args.connections < 1 or args.fake_procs < 1:
        parser.error("--max-n, --connections and --fake-procs must be at least 1")
    if min(args.duration, args.latency_duration) <= 0 or args.warmup < 0:
        parser.error("durations must be positive")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="tokenhub-bench-scale-"))
    print(f"workdir: {workdir}", flush=True)
    procs = Procs()
    try:
        results = run(args, workdir, procs)
    except KeyboardInterrupt:
        print("interrupted: stopping every process the benchmark started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench_scale: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table([Row(**r) for r in results["rows"]]))
    print(f"\n{results['pinning']}\n{results['postgres']}\nload generator: {results['loadgen']}")
    for row in results["rows"]:
        if row["errors"]:
            print(f"warning: {row['label']}: {row['errors']} requests failed (non-2xx or socket errors)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
