# syntax=docker/dockerfile:1.7
# One image for every Fitroom process: the gateway (`fitroom serve`), the stage workers
# (`fitroom worker --stage ...`) and the model repository that Triton serves (/models, built by
# `fitroom models build`). They share one package and one set of models, so one image keeps a
# rollout atomic: the image tag *is* the code version and the model version.
#
# Targets:
#   cpu  (default) python:3.11 slim + the CPU build of torch: gateway and workers in distributed
#        mode (inference runs on Triton) and embedded mode on CPU hosts.
#   cuda nvidia/cuda runtime + the CUDA build of torch: embedded mode (FITROOM_INFERENCE=local)
#        on a GPU host.
#   docker build -t fitroom:cpu .            docker build --target cuda -t fitroom:cuda .
#
# Bases are pinned to exact tags; pin digests too in your registry mirror (see docs/OPERATIONS.md).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.6.14

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- CPU: virtualenv and models
FROM ${PYTHON_IMAGE} AS build-cpu
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_LINK_MODE=copy
WORKDIR /src
# torch first, from the CPU index (the PyPI wheel pulls gigabytes of CUDA libraries); the
# project's own pin (torch==2.13.0) is then already met.
RUN uv venv --python /usr/local/bin/python3.11 /opt/fitroom \
 && uv pip install --python /opt/fitroom/bin/python --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY services ./services
RUN uv pip install --python /opt/fitroom/bin/python .
# The model repository: config.pbtxt and 1/model.pt per model (the MediaPipe wheel is fetched
# from PyPI and checked against its sha256 here, at build time, never at run time).
RUN FITROOM_MODEL_REPOSITORY=/models FITROOM_CACHE_DIR=/tmp/fitroom-cache /opt/fitroom/bin/fitroom models build \
 && rm -rf /tmp/fitroom-cache

# ---------------------------------------------------------------- CPU runtime
FROM ${PYTHON_IMAGE} AS cpu
# /data: FITROOM_DATA_DIR. /model-export: empty, owned by the image's user, so a fresh volume
# mounted there (docker-compose.yml's `models` service) is writable without root.
RUN groupadd --gid 10001 fitroom \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data --shell /usr/sbin/nologin fitroom \
 && install -d -o 10001 -g 10001 /data /model-export
COPY --from=build-cpu /opt/fitroom /opt/fitroom
COPY --from=build-cpu /models /models
ENV PATH=/opt/fitroom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FITROOM_MODEL_REPOSITORY=/models \
    FITROOM_DATA_DIR=/data \
    FITROOM_CACHE_DIR=/tmp/fitroom-cache
WORKDIR /data
USER 10001:10001
EXPOSE 8080
# The gateway's liveness; worker containers override it with `fitroom worker-health --stage S`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["fitroom"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

# ---------------------------------------------------------------- CUDA: virtualenv
FROM ${CUDA_IMAGE} AS build-cuda
COPY --from=uv /uv /usr/local/bin/uv
# Ubuntu's python is not 3.11: uv installs a standalone CPython 3.11 under /opt/python.
ENV UV_NO_CACHE=1 UV_LINK_MODE=copy UV_PYTHON_INSTALL_DIR=/opt/python
WORKDIR /src
RUN uv python install 3.11 \
 && uv venv --python 3.11 /opt/fitroom \
 && uv pip install --python /opt/fitroom/bin/python torch==2.13.0
COPY pyproject.toml README.md ./
COPY services ./services
RUN uv pip install --python /opt/fitroom/bin/python .

# ---------------------------------------------------------------- CUDA runtime
FROM ${CUDA_IMAGE} AS cuda
RUN groupadd --gid 10001 fitroom \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data --shell /usr/sbin/nologin fitroom \
 && install -d -o 10001 -g 10001 /data /model-export
COPY --from=build-cuda /opt/python /opt/python
COPY --from=build-cuda /opt/fitroom /opt/fitroom
# The same models as the CPU image: TorchScript files are device-neutral.
COPY --from=build-cpu /models /models
ENV PATH=/opt/fitroom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FITROOM_MODEL_REPOSITORY=/models \
    FITROOM_DATA_DIR=/data \
    FITROOM_CACHE_DIR=/tmp/fitroom-cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /data
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["fitroom"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

# The default target (last stage wins otherwise): the CPU image.
FROM cpu AS default
