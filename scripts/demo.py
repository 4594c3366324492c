"""`make demo`: TokenHub in front of five fake providers, with traffic, and no provider key needed.

    python scripts/demo.py [run]      fakes + TokenHub (configured by deploy/demo/tokenhub.yaml through
                                      TOKENHUB_CONFIG_FILE) + traffic; Ctrl-C stops everything
    python scripts/demo.py fakes      only the fake providers, on 127.0.0.1:9101-9105 (--host to change)
    python scripts/demo.py traffic    only the traffic generator, against a running TokenHub

The fakes differ in latency, failure rate and answer quality (scripts/demo_fakes.py), TokenHub's
configuration gives them prices; one of them degrades after a while, so routing, failover, the circuit
breaker and the bandit's learning all show in /metrics and the admin API. See docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: `python scripts/demo.py`

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from scripts.demo_fakes import DEFAULT_PORT_BASE, FakeProvider, demo_lineup  # noqa: E402
from scripts.demo_traffic import Traffic  # noqa: E402

CONFIG_FILE = ROOT / "deploy" / "demo" / "tokenhub.yaml"
KEY_NAME = "demo-app"  # the api_keys entry of the config file the traffic uses
PROVIDER_KEY_ENV = "DEMO_PROVIDER_KEY"  # the config's api_key_env; the fakes accept any key
DEFAULT_DEGRADE_AFTER = 60.0
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


# --- fakes -------------------------------------------------------------------------------------------


async def start_fakes(host: str, port_base: int, degrade_after: float) -> list[tuple[str, FakeProvider]]:
    """The lineup's servers, started; port base 0 lets the OS pick each port (tests)."""
    started: list[tuple[str, FakeProvider]] = []
    try:
        for seed, entry in enumerate(demo_lineup(degrade_after)):
            port = port_base + entry.offset if port_base else 0
            fake = FakeProvider([entry.model], host=host, port=port, seed=seed + 1)
            await fake.start()
            started.append((entry.provider_id, fake))
    except BaseException:
        await stop_fakes(started)
        raise
    return started


async def stop_fakes(fakes: list[tuple[str, FakeProvider]]) -> None:
    for _, fake in fakes:
        await fake.stop()


def print_fakes(fakes: list[tuple[str, FakeProvider]], degrade_after: float) -> None:
    for (provider_id, fake), entry in zip(fakes, demo_lineup(degrade_after), strict=True):
        m = entry.model
        print(
            f"  {provider_id:8s} {fake.base_url:24s} {m.name:12s} {m.latency_ms:4.0f} ms, {m.failure_rate:4.0%} errors,"
            f" {m.quality:.0%} right: {entry.summary}"
        )


def relocated_config(fakes: list[tuple[str, FakeProvider]], config_file: Path = CONFIG_FILE) -> dict[str, Any]:
    """The demo configuration with each provider's base_url pointing at where its fake actually listens."""
    config: dict[str, Any] = yaml.safe_load(config_file.read_text())
    where = {provider_id: fake.base_url for provider_id, fake in fakes}
    for provider in config["providers"]:
        provider["base_url"] = where[provider["id"]]
    return config


# --- TokenHub ----------------------------------------------------------------------------------------


class TokenHub:
    """`python -m pipeline serve` in its own process group (Ctrl-C reaches the demo, which stops the traffic
    first and TokenHub last), its log in the data directory."""

    def __init__(self, host: str, port: int, data_dir: Path, config_file: Path) -> None:
        self.base_url = f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"
        self.data_dir = data_dir
        self.config_file = config_file
        self.admin_token = secrets.token_hex(24)
        self.log_path = data_dir / "tokenhub.log"
        env = dict(
            os.environ,
            TOKENHUB_CONFIG_FILE=str(config_file),
            TOKENHUB_DATA_DIR=str(data_dir),
            TOKENHUB_LISTEN_ADDR=f"{host}:{port}",
            TOKENHUB_ADMIN_TOKEN=self.admin_token,
            TOKENHUB_LOG_LEVEL="warning",
            # Fail over at once instead of retrying the same provider: the failover is what the demo shows.
            TOKENHUB_PROVIDER_MAX_RETRIES="0",
            TOKENHUB_PROVIDER_TIMEOUT_SECS="10",
            TOKENHUB_BREAKER_COOLDOWN_SECS="10",
            TOKENHUB_HEALTH_PROBE_INTERVAL_SECS="5",
            # Short memory (in requests), so the degradation visibly moves traffic during the demo.
            TOKENHUB_BANDIT_HALF_LIFE_REQUESTS="100",
            TOKENHUB_BANDIT_REFRESH_SECS="30",
            TOKENHUB_FEEDBACK_RATE_LIMIT_RPS="200",
            TOKENHUB_FEEDBACK_RATE_LIMIT_BURST="400",
            TOKENHUB_SHUTDOWN_DRAIN_SECS="5",
        )
        env.setdefault(PROVIDER_KEY_ENV, "demo-key-the-fakes-accept-any")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "serve"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def ready(self, session: aiohttp.ClientSession) -> str:
        """Waits until TokenHub answers and has applied the configuration; returns the demo's API key."""
        keys_file = self.data_dir / "config-keys.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"TokenHub exited with status {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError, KeyError):
                async with session.get(self.base_url + "/healthz") as resp:
                    if resp.status == 200 and keys_file.exists():
                        return str(json.loads(keys_file.read_text())[KEY_NAME])
            await asyncio.sleep(0.2)
        raise DemoError(
            f"TokenHub did not apply {self.config_file} within {STARTUP_TIMEOUT:.0f} s (no healthy"
            f" /healthz or no {KEY_NAME!r} key in {keys_file}); does this version read TOKENHUB_CONFIG_FILE?\n"
            + self.log_tail()
        )

    async def stop(self) -> int:
        """SIGINT (TokenHub's graceful shutdown: drains requests, writes the request log), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.wait()


class DemoError(RuntimeError):
    pass


# --- what happened -----------------------------------------------------------------------------------


def metrics_summary(text: str) -> list[str]:
    """The few /metrics series that tell the demo's story, as lines."""
    served: dict[str, float] = {}
    attempts: dict[str, dict[str, float]] = {}
    health: dict[str, float] = {}
    skips: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tokenhub_requests_total" and s.labels.get("status") == "ok":
                served[s.labels["model"]] = served.get(s.labels["model"], 0) + s.value
            elif s.name == "tokenhub_provider_attempts_total":
                attempts.setdefault(s.labels["provider"], {})[s.labels["outcome"]] = s.value
            elif s.name == "tokenhub_provider_health_state":
                health[s.labels["provider"]] = s.value
            elif s.name == "tokenhub_provider_skips_total" and s.labels.get("reason") == "health_down":
                skips[s.labels["provider"]] = s.value
    states = {2: "healthy", 1: "degraded", 0: "down (breaker open)"}
    lines = ["served by model: " + ", ".join(f"{m} {n:.0f}" for m, n in sorted(served.items()))]
    for provider, outcomes in sorted(attempts.items()):
        failed = sum(n for outcome, n in outcomes.items() if outcome != "ok")
        lines.append(
            f"  {provider:8s} calls ok {outcomes.get('ok', 0):.0f}, failed {failed:.0f};"
            f" now {states.get(int(health.get(provider, 2)), '?')};"
            f" skipped while down {skips.get(provider, 0):.0f}"
        )
    return lines


def banner(hub: TokenHub, degrade_after: float, config: Path) -> str:
    token, url = hub.admin_token, hub.base_url
    return f"""
TokenHub demo: {url}  (configuration: {config}; TokenHub's log: {hub.log_path})
  admin UI     {url}/admin/        admin token: {token}
  metrics      curl -s {url}/metrics | grep -E '^tokenhub_(requests|provider_attempts|provider_health)'
  health       curl -s {url}/admin/v1/health -H 'Authorization: Bearer {token}'
  learning     curl -s '{url}/admin/v1/rewards?limit=5' -H 'Authorization: Bearer {token}'
  per model    curl -s {url}/admin/v1/stats -H 'Authorization: Bearer {token}'
  live events  curl -sN {url}/admin/v1/events -H 'Authorization: Bearer {token}'
What to look at: `thompson` traffic drifts to fader-turbo (cheap, fast, right) and away from flaky-fast;
flaky-fast's failures fail over to another model (X-TokenHub-Attempts, tokenhub_provider_attempts_total);
{degrade_after:.3g} s after its first call fader-turbo degrades to 90% errors: its breaker opens
(tokenhub_provider_health_state 0, health_change events), traffic fails over, and the bandit moves away.
Ctrl-C stops everything.
"""


# --- commands ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def degrade_after_for(args: argparse.Namespace) -> float:
    """A bounded run degrades a third of the way in, so even a short one shows it."""
    if args.degrade_after is not None:
        return float(args.degrade_after)
    duration = getattr(args, "duration", None)
    return DEFAULT_DEGRADE_AFTER if duration is None else min(DEFAULT_DEGRADE_AFTER, duration / 3)


async def cmd_fakes(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    degrade_after = degrade_after_for(args)
    with stop_on_signals(stop):
        fakes = await start_fakes(args.host, args.port_base, degrade_after)
        try:
            print("fake providers (Ctrl-C to stop):", flush=True)
            print_fakes(fakes, degrade_after)
            sys.stdout.flush()
            await stop.wait()
        finally:
            await stop_fakes(fakes)
    return 0


async def cmd_traffic(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("TOKENHUB_API_KEY", "")
    if not key and args.keys_file:
        key = json.loads(Path(args.keys_file).read_text()).get(KEY_NAME, "")
    if not key:
        print("traffic: no API key (--key, TOKENHUB_API_KEY or --keys-file)", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    with stop_on_signals(stop):
        traffic = Traffic(args.url, key, rate=args.rate, stream_share=args.stream_share, seed=args.seed)
        stats = await traffic.run(args.duration, stop)
    print(f"traffic done: {stats.line()}")
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    degrade_after = degrade_after_for(args)
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="tokenhub-demo-")) if temporary else Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fakes: list[tuple[str, FakeProvider]] = []
    hub: TokenHub | None = None
    status = 0
    with stop_on_signals(stop):
        try:
            fakes = await start_fakes("127.0.0.1", args.fake_port_base, degrade_after)
            config = CONFIG_FILE
            if args.fake_port_base != DEFAULT_PORT_BASE:  # the fakes moved: TokenHub reads a copy that follows
                config = data_dir / "demo-config.yaml"
                config.write_text(yaml.safe_dump(relocated_config(fakes), sort_keys=False))
            hub = TokenHub(args.host, args.port, data_dir, config)
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                key = await _until_stopped(hub.ready(session), stop)
                if key is None:
                    return 0
                print("fake providers:")
                print_fakes(fakes, degrade_after)
                print(banner(hub, degrade_after, config), flush=True)
                traffic = Traffic(hub.base_url, key, rate=args.rate, stream_share=args.stream_share, seed=args.seed)
                run = asyncio.create_task(traffic.run(args.duration, stop))
                while not run.done():
                    await asyncio.wait([run], timeout=0.5)
                    if hub.proc.poll() is not None and not run.done():
                        stop.set()
                        raise DemoError(f"TokenHub exited with status {hub.proc.returncode}:\n{hub.log_tail()}")
                print(f"\ntraffic: {run.result().line()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(hub.base_url + "/metrics") as resp:
                        print("\n".join(metrics_summary(await resp.text())))
        except DemoError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            status = 1
        finally:
            if hub is not None:
                code = await hub.stop()
                print(f"TokenHub stopped (exit status {code})")
            await stop_fakes(fakes)
            if temporary:
                shutil.rmtree(data_dir, ignore_errors=True)
    return status


async def _until_stopped(work: Any, stop: asyncio.Event) -> Any:
    """`work`'s result, or None when `stop` is set first (Ctrl-C while TokenHub starts)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


COMMANDS = {"run": cmd_run, "fakes": cmd_fakes, "traffic": cmd_traffic}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")

    def traffic_options(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--rate", type=float, default=5.0, help="requests per second (default 5)")
        cmd.add_argument("--duration", type=float, default=None, help="seconds of traffic (default: until Ctrl-C)")
        cmd.add_argument("--stream-share", type=float, default=0.3, help="share of streamed requests (default 0.3)")
        cmd.add_argument("--seed", type=int, default=0, help="seed of the traffic's choices")

    def degrade_option(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--degrade-after",
            type=float,
            default=None,
            help=f"seconds after its first call fader-turbo degrades (default {DEFAULT_DEGRADE_AFTER:g},"
            " or a third of --duration)",
        )

    run = sub.add_parser("run", help="fakes + TokenHub + traffic (the default)")
    run.add_argument("--host", default="127.0.0.1", help="TokenHub's listen host (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8080, help="TokenHub's port (default 8080)")
    run.add_argument(
        "--fake-port-base",
        type=int,
        default=DEFAULT_PORT_BASE,
        help=f"first fake's port (default {DEFAULT_PORT_BASE}; 0 = any free ports, TokenHub reads a relocated copy"
        " of the configuration)",
    )
    run.add_argument("--data-dir", default=None, help="TokenHub's data directory (default: a temporary one)")
    traffic_options(run)
    degrade_option(run)

    fakes = sub.add_parser("fakes", help="only the fake providers")
    fakes.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    fakes.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE, help="first port (default 9101)")
    degrade_option(fakes)

    traffic = sub.add_parser("traffic", help="only the traffic generator, against a running TokenHub")
    traffic.add_argument("--url", default="http://127.0.0.1:8080", help="TokenHub's base URL")
    traffic.add_argument("--key", default="", help="a TokenHub API key (or TOKENHUB_API_KEY)")
    traffic.add_argument("--keys-file", default="", help=f"a config-keys.json to read the {KEY_NAME!r} key from")
    traffic_options(traffic)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")  # `demo.py --duration 8` is `demo.py run --duration 8`
    args = parser().parse_args(argv)
    return asyncio.run(COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
