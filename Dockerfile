# syntax=docker/dockerfile:1.7
#
# Three images from one file (BuildKit builds only the stages a target needs):
#
#   docker build --target operator -t ghcr.io/trtrefit/trt-refit-operator:0.1.0 .
#   docker build --target worker   -t ghcr.io/trtrefit/trt-refit-worker:0.1.0 .
#   docker build --target serving  -t ghcr.io/trtrefit/trt-refit-serving:0.1.0 .
#
# operator: `trtrefit operator` (kopf, kubernetes, pydantic). Slim: no torch, no CUDA.
# worker:   `trtrefit refit` in the refit Job: torch + torch-tensorrt, s3fs and gcsfs from PyPI. The torch
#           and TensorRT wheels carry the CUDA runtime, cuDNN and TensorRT libraries; the node's NVIDIA
#           container toolkit supplies the driver, so no CUDA base image is needed.
# serving:  `trtrefit serve` in the serving Deployment of an InPlace rollout: the worker's stack plus
#           FastAPI + uvicorn; listens on 8080 (Open Inference Protocol v2, /metrics).
#
# All run as the numeric non-root user 65532 so that `runAsNonRoot: true` can be verified by the
# kubelet, and work with a read-only root filesystem (the chart mounts an emptyDir at /tmp).
# The base is pinned to an exact Python patch release and Debian release; mirror it and add its
# `@sha256:` digest in your registry (docs/helm.md, "Images"), e.g. with Renovate's pinDigests.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# The project's wheel and every dependency it needs, built once per image kind. The final stages install
# from these wheels only (--no-index), so what was resolved here is exactly what ships.
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ ./operator/

FROM source AS wheels-operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM source AS wheels-worker
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[worker,tensorrt,gcs]"

FROM source AS wheels-serving
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[worker,serve,tensorrt,gcs]"

# ---------------------------------------------------------------------------------------------------------
# What both images share: a virtualenv owned by root (the process cannot modify its own code) and the
# unprivileged user the process runs as.
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/trtrefit \
    PATH=/opt/trtrefit/bin:$PATH \
    HOME=/tmp
RUN python -m venv /opt/trtrefit \
    && groupadd --system --gid 65532 trtrefit \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trtrefit
LABEL org.opencontainers.image.source="https://github.com/trtrefit/trt-refit-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
WORKDIR /tmp
ENTRYPOINT ["trtrefit"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime AS operator
LABEL org.opencontainers.image.title="trt-refit-operator" \
      org.opencontainers.image.description="TRTModel operator: refit Jobs, verification gate, rollouts"
RUN --mount=type=bind,from=wheels-operator,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "trtrefit==${VERSION}"
USER 65532:65532
EXPOSE 8080
CMD ["operator"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime AS worker
LABEL org.opencontainers.image.title="trt-refit-worker" \
      org.opencontainers.image.description="trtrefit refit: refits a Torch-TensorRT program, verifies, publishes"
# The NVIDIA container toolkit mounts the driver libraries for these capabilities.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    XDG_CACHE_HOME=/tmp/cache
RUN --mount=type=bind,from=wheels-worker,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "trtrefit[worker,tensorrt,gcs]==${VERSION}"
USER 65532:65532
CMD ["refit", "--help"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime AS serving
LABEL org.opencontainers.image.title="trt-refit-serving" \
      org.opencontainers.image.description="trtrefit serve: Open Inference Protocol v2 server refitted live (InPlace)"
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    XDG_CACHE_HOME=/tmp/cache
RUN --mount=type=bind,from=wheels-serving,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "trtrefit[worker,serve,tensorrt,gcs]==${VERSION}"
USER 65532:65532
EXPOSE 8080
CMD ["serve", "--help"]
