# syntax=docker/dockerfile:1
# oneseek-job: trains LoRA adapters on NVIDIA GPUs and publishes them with provenance.
#   docker build -t ghcr.io/oneseek/oneseek-job:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
# CUDA comes from PyPI's torch wheels (the nvidia-* runtime libraries they depend on); the
# node provides only the driver, through the NVIDIA container toolkit.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a self-contained venv with the pinned dependency set ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=https://pypi.org/simple \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The stock pip (23.x) backtracks for minutes on this set and then fails (DESIGN.md traps).
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3

COPY requirements/constraints.txt requirements/constraints.txt
# torch first: the biggest layer, and it changes least often.
RUN pip install --no-cache-dir -c requirements/constraints.txt torch==2.13.0

COPY pyproject.toml README.md ./
COPY oneseek_job ./oneseek_job
RUN pip install --no-cache-dir -c requirements/constraints.txt . \
    && pip check \
    && python -c "import oneseek_job.cli"

# ---- runtime: the venv, a non-root user and nothing else ----
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="oneseek-job" \
      org.opencontainers.image.description="Trains one LoRA adapter per base model of OneSeek-7B-Zero and publishes adapters, weights and signed provenance to S3-compatible storage." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/oneseek/oneseek-job" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="OneSeek" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# A fixed UID/GID (10001) that the chart's securityContext and runAsNonRoot can rely on.
# The mount points exist so read-only root filesystems can mount volumes there; only
# /tmp, /cache, /work and /checkpoints are written, all as mounts in Kubernetes.
RUN groupadd --system --gid 10001 oneseek \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin oneseek \
    && mkdir -p /models /cache /work /checkpoints \
    && chown 10001:10001 /cache /work /checkpoints

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/hf \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TRITON_CACHE_DIR=/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/cache/inductor \
    _TYPER_STANDARD_TRACEBACK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MODELS_DIR=/models \
    ONESEEK_WORK_DIR=/work \
    CHECKPOINT_DIR=/checkpoints

USER 10001:10001
WORKDIR /work

ENTRYPOINT ["oneseek-job"]
CMD ["train"]
