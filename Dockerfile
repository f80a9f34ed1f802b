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
WORKDIR /src
# Wheels built on the host for builds that cannot reach PyPI; an empty folder otherwise (mkdir .whl).
COPY .whl/ /wheels/
COPY pyproject.toml README.md ./
COPY src ./src
# Core + server + PostgreSQL driver only: no training, TensorFlow, OpenVINO or test stacks.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --find-links /wheels ".[serve,postgres]" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
    && find /opt/venv -depth -type d -name tests -path "*/site-packages/*" -exec rm -rf {} +

FROM ${BASE}
RUN groupadd --system --gid 10001 eodeploy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin eodeploy
COPY --from=build /opt/venv /opt/venv
COPY models /opt/eodeploy/models
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EODEPLOY_MODEL_REPO=/opt/eodeploy/models \
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
