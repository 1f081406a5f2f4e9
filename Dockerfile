# The glasses verdict service: Debian bookworm slim, Python 3.11, LiteRT (no TensorFlow), the model baked in.
#
#   scripts/container.sh build         # here: podman, the local debootstrap base (docs/container.md)
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t glasses-verdict .   # with a registry
#   podman run --rm -p 3000:3000 localhost/glasses-verdict
#
# Build arguments:
#   BASE_IMAGE  a Debian bookworm image; python3 is apt-installed if it lacks it (default: the local
#               stand-in for debian:bookworm-slim that scripts/container.sh builds with debootstrap)
#   MODEL_FILE  the exported .bentomodel to bake in, relative to the build context
#               (default: the bundled default model)
#
# One stage on purpose: everything the build needs (uv, the .bentomodel archive) is installed and
# removed inside the RUN that uses it, or only bind-mounted, so no layer keeps it.
ARG BASE_IMAGE=localhost/glasses-base:bookworm
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="glasses-verdict" \
      org.opencontainers.image.description="Glasses / no-glasses verdict microservice (BentoML, LiteRT)"

# Debian's python3 when the base lacks it (debian:bookworm-slim); a no-op on the local base. The
# server's non-root user.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && apt-get clean && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --create-home --uid 10001 --user-group glasses
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# The runtime virtualenv: one layer, cached until pyproject.toml changes.
#  - requirements = [project].dependencies, read from pyproject.toml: the serving runtime only
#    (BentoML, Pillow, numpy, ai-edge-litert), so the pins never drift and no TensorFlow, Keras or
#    train/dev extra gets in; versions are served on LiteRT (their model.tflite, glasses/runtimes.py);
#  - uv (pinned, in a throwaway venv; SSL_CERT_FILE = the system CA bundle) installs them from PyPI
#    with parallel downloads;
#  - slimming: the packages' own test suites and LiteRT's WebGPU accelerator (19 MB; CPU only here).
WORKDIR /app
COPY pyproject.toml ./
RUN set -eu \
    && python3 -m venv /tmp/uv && /tmp/uv/bin/pip install --quiet --no-cache-dir uv==0.13.8 \
    && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']))" >/tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && python3 -m venv --without-pip /opt/venv \
    && SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt /tmp/uv/bin/uv pip install --no-cache \
        --python /opt/venv/bin/python --compile-bytecode -r /tmp/requirements.txt \
    && cd /opt/venv/lib/python3.11/site-packages \
    && find . -type d \( -name tests -o -name test \) -prune -exec rm -rf {} + \
    && rm -f ai_edge_litert/libLiteRtWebGpuAccelerator.so \
    && rm -rf /tmp/uv /tmp/requirements.txt

# The service code (what `make serve` runs: bentofile.yaml -> service/service.py, glasses/).
COPY bentofile.yaml ./
COPY glasses/ glasses/
COPY service/ service/
# Bytecode compiled now: the server user cannot write /app, so without it both processes of `bentoml
# serve` (the CLI and the worker) would compile every module of glasses/ and service/ at each start.
RUN python -m compileall -q -j 0 glasses service

# The model, imported into the image's BentoML store and promoted with the project's registry code.
# The archive is bind-mounted, never copied into a layer. Model files stay root-owned (read-only to
# the server); the store's top directory belongs to the server, which writes its metrics dir there.
ARG MODEL_FILE=models/glasses_classifier.bentomodel
ENV BENTOML_HOME=/opt/bentoml \
    BENTOML_DO_NOT_TRACK=True
RUN --mount=type=bind,source=${MODEL_FILE},target=/tmp/model.bentomodel \
    python -c "from pathlib import Path; from glasses.registry import import_bundled_model, promote; \
print('baked model:', promote(import_bundled_model(Path('/tmp/model.bentomodel'))))" \
    && chmod -R a+rX "$BENTOML_HOME" \
    && chown glasses:glasses "$BENTOML_HOME"

ENV BENTOML_HOST=0.0.0.0 \
    BENTOML_PORT=3000 \
    GLASSES_RUNTIME=litert
USER glasses
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('BENTOML_PORT', '3000'), timeout=4)"]
# `bentoml serve` (as `make serve`) reads bentofile.yaml. As PID 1 its process manager handles
# SIGTERM: it stops the workers and exits 0 within about a second (tested).
CMD ["bentoml", "serve"]
