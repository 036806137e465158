"""The Beam pipeline: per split, Create(refs) → EncodeExample → WriteToTFRecord (GZIP shards).

An example whose files are bad (an IngestError from `decode`) does not fail the pipeline: Beam's
dead-letter output (`ParDo.with_exception_handling`) collects it with its reason, and every
rejection of the run comes back to the driver, which fails the run listing them all or, asked to
skip them, writes the good examples and a list of the bad. Runs on any Beam runner (DirectRunner
in-process by default); input and output paths must be readable and writable by the workers.
"""

import dataclasses
import json
import logging
import math
import re
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from unet_tfx.ingest import decode, records
from unet_tfx.ingest.errors import IngestError
from unet_tfx.ingest.sources import ALL, Ref, natural_key

EXAMPLES_PER_SHARD = 64
# Rejections are written here by the workers, read back by `run` and removed.
REJECTED_PREFIX = "_rejected"
METRICS_NAMESPACE = "unet_tfx.ingest"
log = logging.getLogger("unet_tfx.ingest")


class EncodeExample(beam.DoFn):
    """Ref → serialized tf.train.Example; logs progress (per worker) every `log_every_s`."""

    height = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "height")
    width = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, "width")

    def __init__(self, split: str, total: int, *, channels: int, max_pixels: int,
                 mask_values: tuple = (), log_every_s: float = 10.0):
        self.split, self.total, self.log_every_s = split, total, log_every_s
        self.channels, self.max_pixels, self.mask_values = channels, max_pixels, mask_values

    def setup(self):
        self.done, self.started, self.logged = 0, None, time.monotonic()

    def process(self, ref: Ref):
        self.started = self.started or time.monotonic()
        try:
            image = self._image(ref)
            mask = None if ref.mask is None else decode.read_mask(
                ref.mask, ref.page, size=image.shape[:2], max_pixels=self.max_pixels,
                mask_values=self.mask_values)
        finally:  # a rejected example counts as done too
            self.done += 1
            self._log_progress()
        self.height.update(image.shape[0])
        self.width.update(image.shape[1])
        yield records.make_example(ref.id, image, mask)

    def _image(self, ref: Ref):
        """The image; if it is bad, one IngestError naming its mask's problem too (checked
        without the image's size), so a run lists every bad file of the pair."""
        try:
            return decode.read_image(ref.image, ref.page, channels=self.channels,
                                     max_pixels=self.max_pixels)
        except IngestError as bad_image:
            if ref.mask is None:
                raise
            try:
                decode.read_mask(ref.mask, ref.page, size=None, max_pixels=self.max_pixels,
                                 mask_values=self.mask_values)
            except IngestError as bad_mask:
                raise IngestError(f"{bad_image}; and {bad_mask}") from None
            raise

    def _log_progress(self):
        now = time.monotonic()
        if self.done < self.total and now - self.logged < self.log_every_s:
            return
        self.logged = now
        rate = self.done / max(now - self.started, 1e-9)
        log.info("%s: %d/%d (%.0f%%), %.1f img/s, ETA %.0f s", self.split, self.done, self.total,
                 100 * self.done / self.total, rate, max(self.total - self.done, 0) / rate)


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A bad example: its id and split, the file at fault (image or mask) and why."""

    id: str
    split: str
    file: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.file}: {self.reason}"


def split_dir(root: Path, split: str) -> Path:
    """Where a split's shards go: the root itself for `ALL`, else root/<split>."""
    return root if split == ALL else root / split


def run(splits: dict[str, list[Ref]], root: Path, *, num_shards: int, channels: int,
        max_pixels: int, beam_args: list[str] | None, mask_values: tuple = ()
        ) -> tuple[tuple[int, int] | None, list[Rejected]]:
    """Write the good examples of every split as shards under `root`. Returns the image
    (height, width) if all good ones share one size, and the rejected examples in id order.

    `num_shards` 0 means one shard per EXAMPLES_PER_SHARD examples. Any exception other than an
    IngestError fails the pipeline; one raised on a worker comes back as an IngestError with its
    message intact.
    """
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args or []))
    for split, refs in splits.items():
        directory = split_dir(root, split)
        directory.mkdir(parents=True, exist_ok=True)
        encode = EncodeExample(split, len(refs), channels=channels, max_pixels=max_pixels,
                               mask_values=mask_values)
        good, bad = (
            pipeline
            | f"Create[{split}]" >> beam.Create(refs)
            | f"Encode[{split}]" >> beam.ParDo(encode).with_exception_handling(
                exc_class=IngestError)
        )
        _ = (
            bad
            | f"Describe[{split}]" >> beam.Map(_rejection, split)
            | f"WriteRejected[{split}]" >> beam.io.WriteToText(
                str(root / f"{REJECTED_PREFIX}-{split}"), file_name_suffix=".jsonl")
        )
        _ = (
            good
            | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                str(directory / records.SHARD_PREFIX),
                file_name_suffix=records.SHARD_SUFFIX,
                num_shards=num_shards or math.ceil(len(refs) / EXAMPLES_PER_SHARD),
                shard_name_template=records.SHARD_TEMPLATE,
                compression_type=CompressionTypes.GZIP,
            )
        )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        found = _ingest_error_in(exc)
        if found is None:
            raise
        raise found from None
    return _uniform_size(result), _read_rejections(root)


def _rejection(dead_letter, split: str) -> str:
    """A dead-letter element, (ref, (exception type, repr, traceback lines)), as a JSON line."""
    ref, (_, _, trace) = dead_letter
    # The traceback's last line is "<module>.IngestError: <message>"; the message names the file.
    message = trace[-1].partition(": ")[2].rstrip("\n")
    names = [decode.describe(path, ref.page) for path in (ref.mask, ref.image) if path]
    file = next((name for name in names if message.startswith(f"{name}: ")), None)
    rejected = Rejected(ref.id, split, file or names[-1],
                        message[len(file) + 2:] if file else message)
    return json.dumps(dataclasses.asdict(rejected))


def _read_rejections(root: Path) -> list[Rejected]:
    """Every rejection the workers wrote under `root`, in id order; the files are removed."""
    found = []
    for path in sorted(root.glob(f"{REJECTED_PREFIX}-*")):
        found += [Rejected(**json.loads(line)) for line in path.read_text().splitlines() if line]
        path.unlink()
    return sorted(found, key=lambda rejected: natural_key(rejected.id))


_STEP_NOTE = re.compile(r" \[while running '[^']*'\]")


def _ingest_error_in(exc: Exception) -> IngestError | None:
    """The IngestError behind a pipeline failure, without Beam's step notes.

    In-process runners re-raise it with " [while running 'step']" appended; runners with worker
    processes raise another type whose message contains the worker's traceback.
    """
    if isinstance(exc, IngestError):
        message = str(exc)
    elif found := re.search(r"IngestError: (.+)", str(exc)):
        message = found.group(1)
    else:
        return None
    return IngestError(_STEP_NOTE.sub("", message).strip())


def _uniform_size(result) -> tuple[int, int] | None:
    """(height, width) from the size metrics if every image had the same, else None."""
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    bounds = {}
    for metric in query["distributions"]:
        value = metric.committed or metric.attempted
        low, high = bounds.get(metric.key.metric.name, (value.min, value.max))
        bounds[metric.key.metric.name] = (min(low, value.min), max(high, value.max))
    if set(bounds) != {"height", "width"} or any(lo != hi for lo, hi in bounds.values()):
        return None
    return bounds["height"][0], bounds["width"][0]
