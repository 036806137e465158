"""unet-tfx: a TFX pipeline that trains U-Net segmentation models for TensorFlow Serving.

TFT 1.16 and TFMA 0.47 need Keras 2, so the legacy-Keras switch is set here, before anything in
the package can import TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
