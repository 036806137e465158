"""Ingestion: image/mask files → sharded GZIP TFRecords of PNG tf.train.Examples, via Beam.

    from unet_tfx.ingest import ingest, IngestError, IngestSummary, read_examples

Names are imported on first use, so that the CLI can register `ingest` without loading Beam and
TensorFlow.
"""

import importlib

_EXPORTS = {
    "ingest": "driver",
    "IngestSummary": "driver",
    "IngestError": "errors",
    "read_examples": "records",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
