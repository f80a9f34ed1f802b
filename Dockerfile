# eodeploy's server image: the inference server (TF Serving REST, OIP v2 REST + gRPC), the
# monitoring API and dashboard, and the bundled models; non-root (uid 10001), works on a read-only
# root filesystem with a writable /tmp. Build (docker, or buildah/podman without a daemon):
#   deploy/image/build.sh                    # no registry reachable: base from debootstrap, wheels from the host
#   docker build --build-arg BASE=python:3.11-slim-bookworm -t eodeploy:0.1.0 .
# Run: docker run -p 8000:8000 -e EODEPLOY_API_KEYS='["<key>"]' eodeploy:0.1.0
# (on 0.0.0.0 the server refuses to start without API keys, unless EODEPLOY_INSECURE=1).
ARG BASE=localhost/debian-py:bookworm-slim

FROM ${BASE} AS build
# 1 with the wheelhouse below holding everything (deploy/image/build.sh): no index is asked.
ARG PIP_NO_INDEX=0
# strip for deploy/image/slim-venv.sh, and venv's pip where the base lacks it (Debian's python3
# without python3-venv); this stage is thrown away, the runtime has neither.
# hadolint ignore=DL3008
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends binutils \
    && { python3 -m ensurepip --version >/dev/null 2>&1 \
         || apt-get install -y -q --no-install-recommends python3-venv; } \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Wheels built on the host for builds that cannot reach PyPI; an empty folder otherwise (mkdir .whl).
COPY .whl/ /wheels/
COPY pyproject.toml README.md ./
COPY src ./src
# Core + server + PostgreSQL driver only: no training, conversion (onnx), TensorFlow, OpenVINO,
# plotting or test stacks. Bytecode is written by slim-venv.sh, for what the server imports.
# onnx goes beside the venv, not into it: slim-venv.sh builds the browser models with it. The
# dashboard's front-end files (pinned in assets.lock.json) are checked, and fetched from the npm
# registry when the context lacks them (a clone where `make install` never ran).
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-compile --find-links /wheels ".[serve,postgres]" \
    && /opt/venv/bin/pip install --no-cache-dir --no-compile --no-deps --find-links /wheels \
       --target /tmp/onnx onnx \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
    && /opt/venv/bin/python -m eodeploy.web.assets
COPY models ./models
COPY deploy/image/slim-venv.sh ./
RUN ./slim-venv.sh /src/models /opt/eodeploy/fused /tmp/onnx

FROM ${BASE}
# /var/lib/eodeploy: where compose and Kubernetes mount the shared maps volume; owned by the
# server's user, so a fresh volume (which copies the mount point's owner) is writable.
RUN groupadd --system --gid 10001 eodeploy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin eodeploy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/eodeploy
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/eodeploy/fused /opt/eodeploy/fused
COPY --from=build /src/models /opt/eodeploy/models
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EODEPLOY_MODEL_REPO=/opt/eodeploy/models \
    EODEPLOY_FUSED_DIR=/opt/eodeploy/fused \
    EODEPLOY_HOST=0.0.0.0 \
    EODEPLOY_PORT=8000 \
    EODEPLOY_GRPC_PORT=8001 \
    EODEPLOY_DATABASE_URL=sqlite:////tmp/eodeploy.db \
    EODEPLOY_MONITOR_DIR=/tmp/monitoring
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 8001
# Asks the port the server was configured with (EODEPLOY_PORT), not a hard-coded one; no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["eodeploy", "health"]
ENTRYPOINT ["eodeploy"]
CMD ["serve"]
