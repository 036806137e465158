"""Spans: `span-N/` folders of one examples folder, one per delivery of new data.

`unet-tfx ingest --span N|next` writes them; the pipeline's ExampleGen reads the newest.
"""

import os
import re

import tensorflow as tf

from unet_tfx.ingest.errors import IngestError

SPAN_DIR = re.compile(r"^span-(\d+)/?$")


def list_spans(examples_dir: str) -> list[int]:
    """The span numbers under `examples_dir` (local or a URI), ascending; empty if none."""
    if not tf.io.gfile.isdir(examples_dir):
        return []
    matches = (SPAN_DIR.match(name) for name in tf.io.gfile.listdir(examples_dir))
    return sorted(int(m.group(1)) for m in matches if m)


def span_dir(examples_dir: str, span: int) -> str:
    return os.path.join(examples_dir, f"span-{span}")


def choose_span(examples_dir: str, span: str | int) -> int:
    """`span` as a number: "next" is one past the newest span (1 for the first)."""
    if str(span) == "next":
        spans = list_spans(examples_dir)
        return spans[-1] + 1 if spans else 1
    if not str(span).isdigit() or int(span) < 1:
        raise IngestError(f"span {span!r}: expected a whole number >= 1 or 'next'")
    return int(span)
