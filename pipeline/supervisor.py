"""``tokenhub serve --workers N``: one supervisor, N worker processes serving one port (docs/scaling.md).

The supervisor serves nothing itself. It holds the data directory's lock for its workers, prepares what must
happen once (SQLite migrations, the key file, a generated admin token, printed once), starts worker 0 (the
DuckDB owner; it also applies the configuration files) and waits until it answers on its Unix socket, then
starts the others. A worker that dies is started again (after 1 s, doubling up to 30 s while it keeps dying
young); meanwhile the others serve, and if the owner is the one gone they buffer their records for it.
SIGHUP is passed to every worker. SIGTERM or SIGINT stops the workers that do not own DuckDB first (each
drains its requests and sends its last records to the owner), then the owner (which writes them), then exits.

Workers run in their own process group, so a terminal's Ctrl-C reaches only the supervisor and the stop keeps
that order. A worker whose supervisor is killed outright stops itself (pipeline/worker_process.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

import structlog

from pipeline.admin_token import TOKEN_FILE, resolve_admin_token
from pipeline.data_lock import DataDirInUse, DataDirLock
from pipeline.settings import PREFIX, Settings
from pipeline.worker_process import owner_socket
from store.config_store import ConfigStore
from store.secret_box import SecretBox

__all__ = ["MAX_SOCKET_PATH", "supervise"]

log = structlog.get_logger("tokenhub.supervisor")
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
OWNER_START_SECS = 120.0  # migrations of a large DuckDB file happen in worker 0's start
TICK_SECS = 0.1
MIN_BACKOFF_SECS, MAX_BACKOFF_SECS, STABLE_SECS = 1.0, 30.0, 30.0
EXIT_CONFIG = 2  # what `tokenhub serve` exits with on a refused configuration: restarting will not help


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = MIN_BACKOFF_SECS
    restart_at: float | None = None
    restarts: int = field(default=0)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _Signals:
    def __init__(self) -> None:
        self.stop: int | None = None
        self.hup = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hup)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = signum

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup = True


def supervise(settings: Settings) -> int:
    """Run the workers until SIGTERM/SIGINT; the exit code `tokenhub serve` returns."""
    if not settings.redis_url:
        print(
            f"tokenhub: {PREFIX}WORKERS={settings.workers} needs {PREFIX}REDIS_URL: without shared state every"
            " worker would grant the full rate limits and budgets on its own (docs/scaling.md)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    path = owner_socket(settings)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        print(
            f"tokenhub: the owner's socket path {path} is longer than {MAX_SOCKET_PATH} bytes (a Unix socket"
            f" limit): use a shorter {PREFIX}DATA_DIR",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        lock = DataDirLock.acquire(settings.data_dir, role="server", listen=settings.listen_addr)
    except DataDirInUse as exc:
        print(f"tokenhub: {exc}", file=sys.stderr)
        return 1
    try:
        _prepare(settings)
        return _Supervisor(settings).run()
    finally:
        lock.release()


def _prepare(settings: Settings) -> None:
    """What must happen once, before any worker opens a file: migrations, the key file, the admin token."""
    config = ConfigStore(settings.sqlite_path, SecretBox.from_key_file(settings.data_dir / ".secret-key"))
    applied = config.open()
    config.close()
    if applied:
        log.info("sqlite_migrated", versions=applied, path=str(settings.sqlite_path))
    token, generated = resolve_admin_token(settings.admin_token, settings.data_dir)
    if generated:  # shown once, on stderr and outside the JSON log, as a single server does
        token_file = settings.data_dir / TOKEN_FILE
        print(
            f"\n  TokenHub admin token (shown once, also saved to {token_file} with mode 0600):\n  {token}\n"
            f"  Print it again with: tokenhub admin-token --data-dir {settings.data_dir}\n",
            file=sys.stderr,
            flush=True,
        )


class _Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.signals = _Signals()
        self.workers = [_Worker(i) for i in range(settings.workers)]
        data_dir = settings.data_dir.resolve()
        self.env = {
            **os.environ,
            f"{PREFIX}WORKERS": str(settings.workers),
            f"{PREFIX}DATA_DIR": str(data_dir),
            f"{PREFIX}LISTEN_ADDR": settings.listen_addr,
            f"{PREFIX}LOG_LEVEL": settings.log_level,
        }
        # Each worker's graceful stop: aiohttp's drain, then the record writer's (or relay's) flush.
        self.stop_secs = settings.shutdown_drain_secs + 30.0

    def run(self) -> int:
        self.signals.install()
        log.info("supervisor_starting", workers=self.settings.workers, listen=self.settings.listen_addr)
        owner = self.workers[0]
        self._spawn(owner)
        code = self._await_owner(owner)
        if code is not None:
            return code
        for worker in self.workers[1:]:
            self._spawn(worker)
        while self.signals.stop is None:
            if self.signals.hup:
                self.signals.hup = False
                self._send_all(signal.SIGHUP)
            if (code := self._tend()) is not None:
                self._stop_all()
                return code
            time.sleep(TICK_SECS)
        log.info("supervisor_stopping", signal=signal.Signals(self.signals.stop).name)
        self._stop_all()
        log.info("supervisor_stopped")
        return 0

    def _spawn(self, worker: _Worker) -> None:
        env = {**self.env, f"{PREFIX}WORKER_INDEX": str(worker.index)}
        worker.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve"], env=env, process_group=0)
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker_started", index=worker.index, pid=worker.proc.pid, analytics_owner=worker.index == 0)

    def _await_owner(self, owner: _Worker) -> int | None:
        """None once worker 0 answers on its socket; its exit code if it stopped starting (or we were told to)."""
        deadline = time.monotonic() + OWNER_START_SECS
        path = owner_socket(self.settings)
        while time.monotonic() < deadline:
            if self.signals.stop is not None:
                self._stop_all()
                return 0
            assert owner.proc is not None
            if (code := owner.proc.poll()) is not None:
                log.error("worker_start_failed", index=0, exit_code=code)
                return code or 1
            if _answers(path):
                return None
            time.sleep(TICK_SECS)
        log.error("worker_start_failed", index=0, reason=f"no answer on {path} within {OWNER_START_SECS:g} s")
        self._stop_all()
        return 1

    def _tend(self) -> int | None:
        """Restart the workers that died (with back-off); an exit code when one refused its configuration."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.proc is None:
                continue
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    worker.restarts += 1
                    self._spawn(worker)
                continue
            code = worker.proc.poll()
            if code is None:
                continue
            lived = now - worker.started
            if code == EXIT_CONFIG and lived < STABLE_SECS:
                log.error("worker_refused_configuration", index=worker.index, exit_code=code)
                return EXIT_CONFIG
            worker.backoff = MIN_BACKOFF_SECS if lived >= STABLE_SECS else min(worker.backoff * 2, MAX_BACKOFF_SECS)
            worker.restart_at = now + (MIN_BACKOFF_SECS if lived >= STABLE_SECS else worker.backoff)
            wait = worker.restart_at - now
            log.warning("worker_died", index=worker.index, pid=worker.proc.pid, exit_code=code, restart_in=wait)
        return None

    def _send_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.alive:
                assert worker.proc is not None
                worker.proc.send_signal(signum)

    def _stop_all(self) -> None:
        """The workers that send records first, then the owner that writes them."""
        self._stop([w for w in self.workers if w.index != 0])
        self._stop(self.workers[:1])

    def _stop(self, workers: list[_Worker]) -> None:
        running = [w for w in workers if w.alive]
        for worker in running:
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_secs
        for worker in running:
            assert worker.proc is not None
            try:
                worker.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker_stop_timeout", index=worker.index, pid=worker.proc.pid, action="SIGKILL")
                worker.proc.kill()
                worker.proc.wait()
            log.info("worker_stopped", index=worker.index, exit_code=worker.proc.returncode)
        for worker in workers:  # a worker waiting to be restarted stays down
            worker.restart_at = None


def _answers(path: os.PathLike[str] | str) -> bool:
    """Whether something accepts connections on the Unix socket (worker 0 opens it once it serves)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return False
    return True
