"""The `unet-tfx ingest` subcommand."""

import argparse
import os
import sys

from unet_tfx.ingest.decode import DEFAULT_MAX_PIXELS
from unet_tfx.ingest.errors import IngestError

EXAMPLES = """\
examples:
  # a dataset file (see data/membrane/dataset.yaml): sources, channels, eval_count
  unet-tfx ingest --dataset data/membrane/dataset.yaml --output out/examples

  # the bundled membrane pairs, 6 of the 30 held out for evaluation
  unet-tfx ingest --images data/membrane/image --masks data/membrane/label \\
      --output out/examples --eval-count 6

  # the ISBI 2012 stacks as published (page i of the labels is the mask of page i)
  unet-tfx ingest --image-stack train-volume.tif --mask-stack train-labels.tif \\
      --output out/isbi --eval-count 6

  # new labelled data for scheduled retraining: out/examples/span-2, span-3, ...
  unet-tfx ingest --images new/image --masks new/label --output out/examples \\
      --eval-count 2 --span next

  # a delivery with some bad files: write the good pairs, list the bad in out/new/rejected.csv
  unet-tfx ingest --images new/image --masks new/label --output out/new --skip-bad

  # unlabeled images, for inference
  unet-tfx ingest --images data/membrane/test --output out/test-examples

  # Beam options after -- (or as --beam-arg=...): here 2 local worker processes
  unet-tfx ingest --images data/membrane/image --masks data/membrane/label \\
      --output out/examples -- --direct_num_workers=2 --direct_running_mode=multi_processing
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `ingest` subcommand to `subparsers`; it sets func=run_command."""
    parser = subparsers.add_parser(
        "ingest",
        help="turn image/mask files into sharded TFRecords of tf.Examples",
        description="Read image/mask pairs (or unlabeled images), check them, and write them as\n"
        "GZIP TFRecord shards of tf.train.Examples (PNG image and mask, height, width, id)\n"
        "with a Beam pipeline. Every bad file is reported in one run (file: reason), and then\n"
        "nothing is written at --output; with --skip-bad the good pairs are written and the\n"
        "bad ones listed in OUTPUT/rejected.csv.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", metavar="FILE", help="a dataset file: its images, masks, "
                        "channels, eval split and mask_values (flags given here override them)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--images", metavar="DIR", help="folder of PNG/TIFF images")
    images.add_argument("--image-stack", metavar="TIFF", help="multi-page TIFF of images")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--masks", metavar="DIR",
                       help="folder of masks with the same file stems as the images")
    masks.add_argument("--mask-stack", metavar="TIFF",
                       help="multi-page TIFF of masks, page i for image page i")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="output folder; must not exist unless --overwrite")
    parser.add_argument("--eval-count", type=int, metavar="N",
                        help="hold out N examples, evenly spread over the id-sorted list, in "
                        "OUTPUT/eval (the rest in OUTPUT/train); 0: all in OUTPUT (default)")
    parser.add_argument("--num-shards", type=int, default=0, metavar="N",
                        help="shards per split (default: one per 64 examples)")
    parser.add_argument("--channels", type=int, metavar="N",
                        help="expected image channels: 1 gray, 3 RGB, ... (default: 1)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="reject images with more pixels (default: %(default)s = 4096*4096)")
    parser.add_argument("--span", metavar="N|next",
                        help="add the data as OUTPUT/span-N (next: one past the newest span) "
                        "beside the spans already there; an existing span needs --overwrite")
    parser.add_argument("--skip-bad", action="store_true",
                        help="write the good examples and list the bad ones (unreadable, wrong "
                        "size, channels or mask levels) in OUTPUT/rejected.csv instead of "
                        "failing (a split left empty still fails)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder (only once the new one is done)")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        dest="beam_flags", help="pass ARG to Beam, e.g. "
                        "--beam-arg=--runner=FlinkRunner (repeatable)")
    parser.add_argument("beam_args", nargs="*", metavar="-- BEAM_ARGS",
                        help="further Beam pipeline options, after --")
    parser.set_defaults(func=run_command)
    return parser


def _sources(args: argparse.Namespace) -> dict:
    """ingest()'s sources, eval_count and channels: the flags', else the dataset file's."""
    from unet_tfx.dataset_spec import load_dataset

    keys = ("images", "masks", "image_stack", "mask_stack")
    given = {key: getattr(args, key) for key in keys if getattr(args, key)}
    spec = load_dataset(args.dataset) if args.dataset else None
    if not given and spec is None:
        raise IngestError("expected --images, --image-stack or --dataset")
    sources = given or spec.sources()
    defaults = {"eval_count": spec.eval_count if spec else 0,
                "channels": spec.channels if spec else 1}
    chosen = {key: default if getattr(args, key) is None else getattr(args, key)
              for key, default in defaults.items()}
    if spec and args.eval_count is None:
        chosen["eval_ids"] = spec.eval_ids
    if spec:
        chosen["mask_values"] = spec.mask_values
    return {**sources, **chosen}


def run_command(args: argparse.Namespace) -> int:
    """Run `ingest` for parsed arguments: 0 on success, 2 (after `error: ...`) for bad input."""
    from unet_tfx.dataset_spec import DatasetError
    from unet_tfx.ingest.driver import REJECTED, ingest

    try:
        summary = ingest(
            args.output, **_sources(args), num_shards=args.num_shards,
            max_pixels=args.max_pixels, overwrite=args.overwrite,
            beam_args=args.beam_flags + args.beam_args, span=args.span, skip_bad=args.skip_bad)
    except (IngestError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.rejected:
        print(f"skipped {summary.rejected} bad example(s) of {summary.count + summary.rejected}: "
              f"listed in {os.path.join(summary.output, REJECTED)}", file=sys.stderr)
    return 0
