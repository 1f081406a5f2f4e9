# The glasses verdict service: Debian bookworm slim, Python 3.11, CPU TensorFlow, model baked in.
#
#   scripts/container.sh build                     # here (podman, local base image; see docs/container.md)
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t glasses-verdict .   # with a registry
#   podman run --rm -p 3000:3000 localhost/glasses-verdict
#
# Build arguments:
#   BASE_IMAGE  a Debian bookworm image; python3 is apt-installed when it lacks it
#               (default: the local stand-in scripts/container.sh builds with debootstrap)
#   MODEL_FILE  the exported .bentomodel to bake in, relative to the build context
#               (default: the bundled default model)
ARG BASE_IMAGE=localhost/glasses-base:bookworm

# --- python: the base image plus Debian's python3 (a no-op on the local base, which has it) -----
FROM ${BASE_IMAGE} AS python
LABEL org.opencontainers.image.title="glasses-verdict" \
      org.opencontainers.image.description="Glasses / no-glasses verdict microservice (BentoML, Keras)"
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# --- build: a venv with the runtime dependencies, and the model imported into a BentoML store ----
FROM python AS build
# binutils: `strip`, to drop symbol tables from TensorFlow's shared libraries (~250 MB).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
# Runtime requirements = [project].dependencies + the `cpu` extra, read from pyproject.toml so the
# pins never drift (no train/dev extras: no pytest, locust, kaggle). Own layer: cached until the
# pins change. Then slim the venv: TensorFlow's C++ headers (~290 MB, for building custom ops),
# libclang (a declared dependency serving never imports), symbol tables (not the dynamic symbols
# that loading needs), the packages' own test suites, and pip/setuptools themselves.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cpu']))" >/tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip uninstall -y libclang \
    && cd /opt/venv/lib/python3.11/site-packages \
    && rm -rf tensorflow/include \
    && find tensorflow -name "*.so*" -type f -exec strip --strip-unneeded {} + \
    && find . -path ./tensorflow -prune -o -type d \( -name tests -o -name test \) -prune -exec rm -rf {} + \
    && pip uninstall -y pip setuptools

COPY bentofile.yaml ./
COPY glasses/ glasses/
COPY service/ service/

ARG MODEL_FILE=models/glasses_classifier.bentomodel
ENV BENTOML_HOME=/opt/bentoml \
    BENTOML_DO_NOT_TRACK=True
COPY ${MODEL_FILE} /tmp/model.bentomodel
# Import with the project's own registry code and promote it, exactly as `make serve` would.
RUN python -c "from pathlib import Path; from glasses.registry import import_bundled_model, promote; \
print('baked model:', promote(import_bundled_model(Path('/tmp/model.bentomodel'))))" \
    && rm /tmp/model.bentomodel \
    && chmod -R a+rX "$BENTOML_HOME"

# --- runtime: the venv, the code and the store; no compilers, pip caches, tests or data ----------
FROM python AS runtime
RUN useradd --create-home --uid 10001 --user-group glasses
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /opt/bentoml /opt/bentoml
# Model files stay root-owned (read-only for the server); BentoML writes its metrics dir beside them.
RUN chown glasses:glasses /opt/bentoml
ENV BENTOML_HOME=/opt/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    BENTOML_HOST=0.0.0.0 \
    BENTOML_PORT=3000 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
USER glasses
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('BENTOML_PORT', '3000'), timeout=4)"]
# `bentoml serve` (the same command as `make serve`) reads bentofile.yaml; its process manager
# handles SIGTERM as PID 1 and stops its workers.
CMD ["bentoml", "serve"]
