# The image every Kubeflow Pipelines / Vertex AI Pipelines task runs in (TFX's Kubeflow V2
# runner starts each task as `python -m tfx.orchestration.kubeflow.v2.container...`).
#   CPU:  docker build -t REGISTRY/unet-tfx:TAG .
#   GPU:  docker build --build-arg VARIANT=gpu -t REGISTRY/unet-tfx:TAG-gpu .
# Ubuntu 22.04 ships the Python 3.10 that TFX 1.16 needs. The environment is requirements.lock,
# installed with --no-deps into /opt/venv as in `make venv`; the package is installed
# non-editable. The container runs as the non-root user `unet` (uid 1000).
#
# GPU: TensorFlow 2.16.2 was built for CUDA 12.3 and cuDNN 8.9. The gpu stage installs exactly
# those as the NVIDIA pip wheels pinned in requirements-gpu.txt (= TF's `and-cuda` extra), so the
# base stays ubuntu:22.04: the NVIDIA driver (libcuda) always comes from the host, and the
# nvidia/cuda 12.3 images with cuDNN carry cuDNN 9, which TF 2.16 does not load.

# cpu or gpu: picks the final stage below.
ARG VARIANT=cpu

# --- build: the virtualenv (a compiler for the two sdists of the lock: crcmod, pyfarmhash) ---
FROM ubuntu:22.04 AS build
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive drops superseded versions, so pinned apt versions would stop building at the
# next security update; the Python packages, which make the environment, are pinned by the lock.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.10 python3.10-venv python3.10-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3.10 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir "pip==24.3.1" \
    && pip install --no-cache-dir --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY unet_tfx ./unet_tfx
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

# --- runtime: Python, the virtualenv, the bundled data; no compiler, no sources ---
FROM ubuntu:22.04 AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/unet \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    UNET_TFX_BUNDLED_DATA=/opt/unet-tfx/data/membrane
# Same reason as above for not pinning apt versions.
# Writable by the user, and by group 0 for clusters that start containers under another uid in
# group root (OpenShift): HOME (caches of matplotlib and Keras, relative outputs) and /gcs,
# /minio, /s3, where the KFP v2 launcher puts input artifacts (kubeflow/pipelines#5673).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.10 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 unet \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/unet --shell /bin/bash unet \
    && mkdir /gcs /minio /s3 \
    && chown 1000:0 /home/unet /gcs /minio /s3 \
    && chmod 0775 /home/unet /gcs /minio /s3
COPY data /opt/unet-tfx/data
COPY --from=build /opt/venv /opt/venv
# Import smoke check, and proof that the installed (non-editable) copy is the one imported.
RUN python -c "import unet_tfx, unet_tfx.pipeline.pipeline, unet_tfx.trainer.run_fn, \
unet_tfx.components.transform; assert unet_tfx.__file__.startswith('/opt/venv/'), unet_tfx.__file__"
WORKDIR /home/unet
# No ENTRYPOINT: Kubeflow / Vertex set the command of each task.
CMD ["unet-tfx", "--help"]

# --- cpu ---
FROM runtime AS cpu
USER 1000:1000

# --- gpu: CUDA 12.3 + cuDNN 8.9 from the NVIDIA wheels ---
FROM runtime AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY requirements-gpu.txt /opt/unet-tfx/
# TF 2.16 does not find the wheels' libraries under site-packages/nvidia/*/lib by itself
# (tensorflow/tensorflow#63362): register them with the dynamic loader (the NVIDIA container
# toolkit's ldconfig hook keeps them) and put the wheel's ptxas on PATH for XLA; then check that
# every library TF 2.16 opens is in the loader's cache.
RUN pip install --no-cache-dir --no-deps -r /opt/unet-tfx/requirements-gpu.txt \
    && ls -d /opt/venv/lib/python3.10/site-packages/nvidia/*/lib > /etc/ld.so.conf.d/unet-tfx-cuda.conf \
    && ldconfig \
    && ln -s /opt/venv/lib/python3.10/site-packages/nvidia/cuda_nvcc/bin/ptxas /usr/local/bin/ptxas \
    && ptxas --version \
    && cache="$(ldconfig -p)" \
    && for lib in libcudart.so.12 libcublas.so.12 libcublasLt.so.12 libcudnn.so.8 libcufft.so.11 \
        libcurand.so.10 libcusolver.so.11 libcusparse.so.12 libnccl.so.2 libnvJitLink.so.12 \
        libnvrtc.so.12 libcupti.so.12; do \
        [[ $cache == *"$lib ("* ]] || { echo "CUDA library $lib not found" >&2; exit 1; }; \
    done
# As in NVIDIA's CUDA images: the NVIDIA container toolkit mounts the driver's compute libraries
# only when asked (its default is `utility`), and GKE / Vertex AI mount the driver under
# /usr/local/nvidia.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    PATH=$PATH:/usr/local/nvidia/bin
USER 1000:1000

FROM ${VARIANT}
