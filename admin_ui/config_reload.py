"""Reloading without a restart: POST /admin/v1/config/reload re-applies TOKENHUB_CONFIG_FILE; SIGHUP does that
and re-reads the settings that apply live (log level, rate limits, routing defaults: spec config.md section 5)
from the environment and TOKENHUB_ENV_FILE. A bad file or bad settings change nothing and are logged."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from admin_ui.common import get_pipelines, get_services
from admin_ui.config_apply import ConfigApplier
from pipeline.errors import ConfigFileInvalid
from pipeline.services import Services
from pipeline.settings import HOT_SETTINGS, Settings, SettingsError
from pipeline.tenants import TenantPipelines

__all__ = ["reload_config_file", "sighup"]

log = structlog.get_logger("tokenhub.config_file")
_RATE_LIMITS = frozenset({"rate_limit_rps", "rate_limit_burst"})


async def reload_config_file(request: web.Request) -> web.Response:
    """Answers what changed per kind; 400 with each problem's line when the file is bad (nothing changed),
    409 when TokenHub was started without a configuration file."""
    summary = await ConfigApplier(get_services(request), get_pipelines(request)).reload("reload")
    return web.json_response({"ok": True, **summary})


async def sighup(services: Services, pipelines: TenantPipelines, reread: Callable[[], Settings]) -> None:
    """What SIGHUP does. ``reread`` loads the settings again the way start-up did (the same CLI flags)."""
    try:
        fresh = reread()
    except SettingsError as exc:
        log.error("settings_reload_failed", error=str(exc), kept="the current settings")
    else:
        changed = services.apply_hot_settings(fresh)
        if _RATE_LIMITS & changed.keys():
            pipelines.rebuild()
        if changed:
            log.info("settings_reloaded", changed={name: list(values) for name, values in changed.items()})
        restart = sorted(
            name
            for name in Settings.model_fields
            if name not in HOT_SETTINGS and getattr(fresh, name) != getattr(services.settings, name)
        )
        if restart:  # names only: some values are secrets
            log.warning("settings_need_restart", names=restart)
    if not services.settings.config_file or services.settings.worker_index > 0:
        return  # `serve --workers N`: worker 0 re-applies the file for all of them
    try:
        await ConfigApplier(services, pipelines).reload("sighup")
    except ConfigFileInvalid as exc:
        log.error("config_reload_failed", error=exc.describe())
    except Exception as exc:  # a signal handler must not die: say what failed, keep serving
        log.error("config_reload_failed", error=f"{type(exc).__name__}: {exc}")
