# syntax=docker/dockerfile:1
# TokenHub image (docs/deploy/docker.md). Two stages: `build` turns the project and every dependency into
# wheels; the runtime stage installs those wheels and nothing else (no compiler, no sources, no pip cache).
#   docker build -t tokenhub .
#   docker run -p 8080:8080 -v tokenhub_data:/data tokenhub
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the checkout out of the context).
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY stages ./stages
COPY adapters ./adapters
COPY store ./store
COPY admin_ui ./admin_ui
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# DL3064 reads "TOKEN" in TOKENHUB_* as a secret; these two are a bind address and a path.
# hadolint ignore=DL3064
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TOKENHUB_LISTEN_ADDR=0.0.0.0:8080 \
    TOKENHUB_DATA_DIR=/data
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it and a bind-mounted /data can be chowned to it.
RUN groupadd --system --gid 10001 tokenhub \
    && useradd --system --uid 10001 --gid tokenhub --home-dir /data --no-create-home --shell /usr/sbin/nologin tokenhub \
    && mkdir /data && chown tokenhub:tokenhub /data && chmod 0700 /data
# The wheels are bind-mounted from the build stage, so they never become a layer of this image; no index is
# asked (--no-index), so what is installed is exactly what the build stage resolved. setuptools and wheel
# (build tools the base image ships) go: nothing is built at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels /wheels/tokenhub-*.whl \
    && python -m pip uninstall --yes setuptools wheel
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
# Exec form: `tokenhub` is PID 1 and receives SIGTERM itself (a shell form would put /bin/sh in between, which
# does not forward it). On SIGTERM it stops accepting, lets in-flight requests finish for up to
# TOKENHUB_SHUTDOWN_DRAIN_SECS (30 s; give `docker stop -t` / stop_grace_period more than that), flushes the
# request log and exits 0. It starts no child processes, so there are no zombies for PID 1 to reap.
STOPSIGNAL SIGTERM
# Ready = /healthz answers 200. A fresh container without a provider reports "unhealthy" with the server's
# reason and fix in `docker inspect` until one is added; Docker restarts on exit, never on health.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["tokenhub", "healthcheck"]
ENTRYPOINT ["tokenhub"]
CMD ["serve"]
