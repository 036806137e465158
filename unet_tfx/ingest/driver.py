"""`ingest()`: check the inputs, run the Beam pipeline into a staging folder, move it into place."""

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path

from unet_tfx.ingest import beam_pipeline, sources, staging
from unet_tfx.ingest.decode import DEFAULT_MAX_PIXELS
from unet_tfx.ingest.errors import IngestError
from unet_tfx.ingest.spans import choose_span, span_dir

MANIFEST = "ingest.json"
REJECTED = "rejected.csv"  # with skip_bad: the bad examples, beside the good ones
log = logging.getLogger("unet_tfx.ingest")


@dataclasses.dataclass(frozen=True)
class IngestSummary:
    """What one ingestion wrote: examples per split, total bytes and wall-clock seconds; with
    skip_bad, how many bad examples were left out (listed in <output>/rejected.csv)."""

    output: str
    count: int
    bytes: int
    seconds: float
    splits: dict[str, int]
    rejected: int = 0


def ingest(output, *, images=None, masks=None, image_stack=None, mask_stack=None,
           eval_count: int = 0, eval_ids=(), num_shards: int = 0, channels: int = 1,
           max_pixels: int = DEFAULT_MAX_PIXELS, overwrite: bool = False,
           beam_args: list[str] | None = None, span: int | str | None = None,
           skip_bad: bool = False, mask_values=()) -> IngestSummary:
    """Write image/mask pairs (or unlabeled images) as sharded GZIP TFRecords of tf.Examples.

    Sources: `images` and optional `masks` folders (PNG/TIFF paired by file stem), or an
    `image_stack` and optional `mask_stack` (multi-page TIFFs paired by page). With `eval_count`
    N > 0, N examples spread evenly over the id-sorted list go to <output>/eval/ and the rest to
    <output>/train/ (`eval_ids` instead names the eval examples); otherwise all shards go
    into <output>/. With `span` (a number or "next"),
    all of that goes into <output>/span-N/ beside the spans already there.

    Bad input raises IngestError, leaving nothing behind at `output`; bad files (unreadable,
    wrong size, channels or mask levels) are all found in one run and listed together. With
    `skip_bad`, the good examples are written and the bad ones listed in <output>/rejected.csv
    (id, split, file, reason; a header only if none was bad) instead; a split left empty still
    fails the run. `mask_values` (K >= 3 mask levels, in class order) makes the masks K-class:
    stored as class indices 0..K-1, any other level refused.
    """
    started = time.monotonic()
    if num_shards < 0:
        raise IngestError(f"num_shards {num_shards}: expected 0 (automatic) or more")
    if not 1 <= channels <= 4:
        raise IngestError(f"channels {channels}: expected 1 to 4")
    if max_pixels < 1:
        raise IngestError(f"max_pixels {max_pixels}: expected at least 1")
    mask_values = tuple(mask_values)
    if mask_values and (len(mask_values) < 3 or len(set(mask_values)) != len(mask_values)
                        or not all(0 <= v <= 255 for v in mask_values)):
        raise IngestError(f"mask_values {list(mask_values)}: expected 3 or more distinct levels "
                          "0-255 (two classes need none)")
    if "://" in str(output):
        raise IngestError(f"{output}: ingestion writes a local folder (staged, then renamed "
                          "into place): expected a local path; copy it to the bucket after, "
                          "e.g. gsutil cp -r")
    refs = sources.find_sources(images, masks, image_stack, mask_stack)
    splits = sources.split_eval(refs, eval_count, eval_ids)
    destination = Path(output)
    if span is not None:
        destination = Path(span_dir(output, choose_span(output, span)))
    for given in (images, masks, image_stack, mask_stack):
        if given is not None and Path(given).resolve().is_relative_to(destination.resolve()):
            raise IngestError(f"{given}: an input inside the output {destination}: expected an "
                              "output folder apart from the inputs (it is replaced whole)")
    log.info("ingesting %d examples (%s) into %s", len(refs), _counts(splits), destination)
    with staging.staged(destination, overwrite) as tmp_dir:
        size, rejected = beam_pipeline.run(splits, tmp_dir, num_shards=num_shards,
                                           channels=channels, max_pixels=max_pixels,
                                           beam_args=beam_args, mask_values=mask_values)
        if rejected:
            splits = _without_rejected(splits, rejected, len(refs), skip_bad)
        if skip_bad:  # even when empty: what was skipped is always written down
            _write_rejected(tmp_dir / REJECTED, rejected)
        sources_given = {"images": images, "masks": masks, "image_stack": image_stack,
                         "mask_stack": mask_stack}
        manifest = _manifest(splits, sources_given, size, channels)
        manifest["rejected"] = len(rejected)
        manifest["mask_values"] = list(mask_values)
        (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    written = sum(f.stat().st_size for f in destination.rglob("*") if f.is_file())
    summary = IngestSummary(str(destination), len(refs) - len(rejected), written,
                            time.monotonic() - started,
                            {split: len(split_refs) for split, split_refs in splits.items()},
                            rejected=len(rejected))
    if rejected:
        log.warning("skipped %d bad example(s) of %d: listed in %s", len(rejected), len(refs),
                    destination / REJECTED)
    log.info("ingested %d examples (%s): %.1f MB in %.1f s into %s", summary.count, _counts(splits),
             written / 1e6, summary.seconds, destination)
    return summary


def _without_rejected(splits: dict[str, list[sources.Ref]],
                      rejected: list[beam_pipeline.Rejected], total: int,
                      skip_bad: bool) -> dict[str, list[sources.Ref]]:
    """The splits without the rejected examples; IngestError listing them all unless
    `skip_bad`, or if a split has nothing left."""
    problems = [(r.file, r.reason) for r in rejected]
    listing = "\n".join(f"  {r.message}" for r in rejected)
    if not skip_bad:
        raise IngestError(
            f"{len(rejected)} bad example(s) of {total}: nothing was written (skip_bad, or "
            f"--skip-bad, writes the other {total - len(rejected)} and lists the bad ones in "
            f"{REJECTED}):\n{listing}", problems)
    bad = {r.id for r in rejected}
    kept = {split: [ref for ref in refs if ref.id not in bad] for split, refs in splits.items()}
    if empty := [split for split, refs in kept.items() if not refs]:
        raise IngestError(f"every example of the {' and '.join(empty)} split is bad, so nothing "
                          f"was written: expected at least one good example per split:\n"
                          f"{listing}", problems)
    return kept


def _write_rejected(path: Path, rejected: list[beam_pipeline.Rejected]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "split", "file", "reason"])
        writer.writerows([r.id, r.split, r.file, r.reason] for r in rejected)


def _manifest(splits: dict[str, list[sources.Ref]], given: dict, size: tuple[int, int] | None,
              channels: int) -> dict:
    """The ingest.json record: counts and ids per split, sources, labeled, size if uniform."""
    refs = [ref for split_refs in splits.values() for ref in split_refs]
    return {
        "count": len(refs),
        "labeled": refs[0].mask is not None,
        "sources": {key: str(Path(path).resolve()) for key, path in given.items() if path},
        "image_height": size[0] if size else None,
        "image_width": size[1] if size else None,
        "channels": channels,
        "splits": {
            split: {"dir": str(beam_pipeline.split_dir(Path("."), split)),
                    "count": len(split_refs), "ids": [ref.id for ref in split_refs]}
            for split, split_refs in splits.items()
        },
    }


def _counts(splits: dict[str, list]) -> str:
    return ", ".join(f"{split} {len(refs)}" for split, refs in splits.items())
