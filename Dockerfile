# syntax=docker/dockerfile:1
# oneseek-job: trains LoRA adapters on NVIDIA GPUs and publishes them with provenance.
#   docker build -t ghcr.io/oneseek/oneseek-job:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
# CUDA comes from PyPI's torch wheels (the nvidia-* runtime libraries they depend on); the
# node provides only the driver, through the NVIDIA container toolkit.
#
# CUDA build line, chosen on purpose: torch 2.13.0 from PyPI is the CUDA 13.0 build. It is
# the only line installable from PyPI alone (cu126/cu128 wheels live on download.pytorch.org,
# not a package registry), and it covers every data-centre GPU we target (T4 through B200).
# Its floor: NVIDIA driver R580 or newer, compute capability 7.5 or higher (Turing; V100
# and P100 are out). On an older driver CUDA is simply absent, so the job's pre-flight
# exits 2 naming the driver and CUDA versions when the pod asked for a GPU
# (ONESEEK_GPU_COUNT), instead of training on the CPU.

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
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm" \
      ai.oneseek.cuda.version="13.0" \
      ai.oneseek.cuda.driver-min="580" \
      ai.oneseek.cuda.compute-capability-min="7.5"

# A fixed UID/GID (10001) that the chart's securityContext and runAsNonRoot can rely on.
# The mount points exist so read-only root filesystems can mount volumes there; only
# /tmp, /cache, /work and /checkpoints are written, all as mounts in Kubernetes.
RUN groupadd --system --gid 10001 oneseek \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin oneseek \
    && mkdir -p /models /cache /work /checkpoints \
    && chown 10001:10001 /cache /work /checkpoints

COPY --from=builder /opt/venv /opt/venv

# No NVIDIA_VISIBLE_DEVICES here: the device plugin sets it for pods that request GPUs, and
# an image default of "all" would hand every GPU of an nvidia-runtime node to a pod that
# asked for none.
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
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MODELS_DIR=/models \
    ONESEEK_WORK_DIR=/work \
    CHECKPOINT_DIR=/checkpoints

USER 10001:10001
WORKDIR /work

ENTRYPOINT ["oneseek-job"]
CMD ["train"]
