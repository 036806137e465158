# The image every pipeline step runs in on Kubeflow Pipelines / Vertex AI (and Beam workers on
# Dataflow via --sdk_container_image). Ubuntu 22.04 ships the Python 3.10 that TFX 1.16 needs.
# CPU:  docker build -t unet-tfx .
# GPU:  docker build --build-arg BASE=nvidia/cuda:12.3.2-cudnn9-runtime-ubuntu22.04 -t unet-tfx:gpu .
ARG BASE=ubuntu:22.04
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    UNET_TFX_BUNDLED_DATA=/opt/unet-tfx/data/membrane

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.10 python3-pip python3.10-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3.10 /usr/local/bin/python

WORKDIR /opt/unet-tfx
COPY requirements.lock .
RUN python -m pip install --no-cache-dir --upgrade "pip==24.3.1" "setuptools==75.6.0" wheel \
    && python -m pip install --no-cache-dir --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY unet_tfx ./unet_tfx
COPY data ./data
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -c "import unet_tfx.pipeline.pipeline, unet_tfx.trainer.run_fn, unet_tfx.components.transform"

# No ENTRYPOINT: the Kubeflow V2 runner and Beam set the command of each step.
CMD ["unet-tfx", "--help"]
