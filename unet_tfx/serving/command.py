"""`unet-tfx predict`: segment images with TF Serving (gRPC or REST) or a local SavedModel."""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from unet_tfx.config import TrainingConfig
from unet_tfx.serving.pictures import contact_sheet, decode_grey, overlay, save_png

log = logging.getLogger("unet_tfx.serving")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SHEET_ROWS = 64  # predictions.png shows at most this many images


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images with the served model (gRPC or REST) or a local SavedModel",
        description="Segment PNG/JPEG images, given as files or folders (searched recursively, "
        "in sorted order), with TF Serving over gRPC (--server) or REST (--rest), or a pushed "
        "SavedModel run in-process (--model-dir). Writes per image a binary mask "
        "(<name>_mask.png, 0 membrane / 255 cell) and an overlay (<name>_overlay.png), keeping "
        "the sub-folders of a folder given, plus predictions.png, a contact sheet of the first "
        f"{SHEET_ROWS}. Every image is checked against the model's size limits before the first "
        "is sent; images of different sizes go in separate requests. Calls are retried on "
        "UNAVAILABLE / RESOURCE_EXHAUSTED (REST 503 / 429) with exponential backoff.",
        epilog="examples:\n"
        "  unet-tfx predict data/membrane/test --server localhost:8500\n"
        "  unet-tfx predict scans/ --rest http://serving:8501 --label canary --masks-only\n"
        "  unet-tfx predict a.png --server serving:8500 --tls-ca ca.pem "
        "--tls-cert me.pem --tls-key me.key\n"
        "  unet-tfx predict data/membrane/test/0.png --model-dir out/serving/unet_membrane",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="PATH",
                        help="PNG or JPEG files, or folders to search for them")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="HOST:PORT", help="TF Serving's gRPC address")
    source.add_argument("--rest", metavar="URL", help="TF Serving's REST address, "
                        "http://host:8501 (https:// with --tls-*)")
    source.add_argument("--model-dir", help="a SavedModel, or a TF Serving model base whose "
                        "highest version (or --version) is used")
    parser.add_argument("--model-name", default="unet_membrane", help="model name on the server")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="model version (default: the latest)")
    which.add_argument("--label", help="model version label, e.g. stable or canary")
    parser.add_argument("--deadline", type=float, default=60.0, metavar="SECONDS",
                        help="per request (default: 60)")
    parser.add_argument("--retry-budget", type=float, default=30.0, metavar="SECONDS",
                        help="retries of a request stop after this long (default: 30)")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate to check the server "
                        "with (turns on TLS)")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="client certificate's private key")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="images per request, at most (default: 8; fewer when the model's "
                        "limits say so)")
    parser.add_argument("-o", "--output", default="out/predictions", help="folder for the pictures")
    parser.add_argument("--threshold", type=float,
                        help="cell probability above which a pixel is cell (default: the "
                        "model's own mask, at the threshold it was exported with)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: the model's serving_tta signature, the mean "
                        "over 8 flips and turns of each image (8x the compute)")
    parser.add_argument("--masks-only", action="store_true",
                        help="write masks only, no overlays or contact sheet: the server sends "
                        "PNG masks instead of float maps when the model has them")
    parser.add_argument("--cells", action="store_true",
                        help="also write <name>_cells.png, the cells as a 16-bit label image "
                        "(1..N, one number per cell) grown from p(cell) by a seeded watershed: "
                        "the regions the Evaluator's watershed_rand_score scores (two-class "
                        "models; not with --masks-only)")
    parser.add_argument("--cell-seed-threshold", type=float, metavar="P",
                        default=TrainingConfig.cell_seed_threshold,
                        help="with --cells: p(cell) above which a pixel seeds a cell (default: "
                        "%(default)g, as the Evaluator's)")
    parser.add_argument("--progress-every", type=int, default=10, metavar="N",
                        help="log progress every N images (default: 10)")
    parser.set_defaults(func=run_command)


class InputError(ValueError):
    """A path that names no image, or two images that would write the same output."""


def find_images(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, output name) per image: a file as given (its stem), a folder's PNG/JPEG files
    found recursively in sorted order (their path under the folder, without suffix)."""
    found, names = [], {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{given}: no PNG or JPEG files in this folder")
            found += [(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise InputError(f"{given}: no such file or folder")
    for file, name in found:
        if name in names:
            raise InputError(f"{name}_mask.png would be written for both {names[name]} and "
                             f"{file}: give them in separate runs or folders")
        names[name] = file
    return found


def _model_dir(args) -> str:
    """--model-dir itself if it is a SavedModel, else its version --version or its highest."""
    from unet_tfx.serving.local_model import latest_version

    if os.path.exists(os.path.join(args.model_dir, "saved_model.pb")):
        return args.model_dir
    if args.version is not None:
        return os.path.join(args.model_dir, str(args.version))
    return latest_version(args.model_dir)


def _segmenter(args):
    from unet_tfx.serving.client import RetryPolicy

    options = dict(version=args.version, label=args.label, deadline=args.deadline,
                   retry=RetryPolicy(budget=args.retry_budget), limits=_limits(args),
                   max_batch=args.batch_size)
    if args.tta:
        from unet_tfx.trainer.export import TTA_SIGNATURE

        options["signature"] = TTA_SIGNATURE
    tls = dict(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    if args.server:
        from unet_tfx.serving.client import SegmentationClient

        return SegmentationClient(args.server, args.model_name, **tls, **options)
    if args.rest:
        from unet_tfx.serving.rest_client import RestSegmentationClient

        return RestSegmentationClient(args.rest, args.model_name, **tls, **options)
    from unet_tfx.serving.client import LocalSegmentationClient

    return LocalSegmentationClient(_model_dir(args), model_name=args.model_name,
                                   **{k: v for k, v in options.items()
                                      if k not in ("version", "label")})


def _limits(args):
    """The limits the model was exported with (--model-dir), else the defaults it is exported
    with (--server, --rest: the server's model folder is not at hand)."""
    from unet_tfx.config import ServingLimits

    if not args.model_dir:
        return ServingLimits()
    from unet_tfx.trainer.export import read_serving_limits

    return read_serving_limits(_model_dir(args)) or ServingLimits()


def check_images(names: list[str], limits) -> None:
    """ImageRefused, naming the file and the limit, for the first image the model would refuse:
    read from its header (and file size), before anything is sent or decoded."""
    from unet_tfx.imaging import TOO_MANY_BYTES, ImageRefused, check_encoded_image

    for name in names:
        size = os.path.getsize(name)
        if size > limits.max_request_bytes:  # not even read
            raise ImageRefused(TOO_MANY_BYTES.format(name, size, limits.max_request_bytes))
        check_encoded_image(Path(name).read_bytes(), limits, name)


class Progress:
    """A log line every `every` images and at the end: done/total, the last image, the rate and
    the time left."""

    def __init__(self, total: int, every: int):
        self.total, self.every, self.done = total, max(every, 1), 0
        self.started = time.monotonic()

    def advance(self, count: int, last: str) -> None:
        before, self.done = self.done, self.done + count
        if self.done // self.every == before // self.every and self.done < self.total:
            return
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        log.info("%d/%d images  %.2f img/s  ETA %s  (%s)", self.done, self.total, rate,
                 _duration(left), last)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def run_command(args) -> int:
    from unet_tfx.imaging import ImageRefused
    from unet_tfx.serving.client import ServingError

    if args.model_dir and (args.tls_ca or args.tls_cert or args.tls_key):
        print("error: --tls-ca, --tls-cert and --tls-key are for --server or --rest",
              file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.deadline <= 0 or args.retry_budget < 0:
        print("error: --batch-size and --deadline must be positive, --retry-budget at least 0",
              file=sys.stderr)
        return 2
    if not 0.0 < args.cell_seed_threshold < 1.0:
        print(f"error: --cell-seed-threshold {args.cell_seed_threshold}: expected a p(cell) "
              "between 0 and 1", file=sys.stderr)
        return 2
    if args.cells and args.masks_only:
        print("error: --cells grows the cells from p(cell), which --masks-only does not fetch",
              file=sys.stderr)
        return 2
    if args.model_dir and args.label:
        print("error: --label needs --server or --rest (labels live in TF Serving's config); "
              "with --model-dir choose a --version", file=sys.stderr)
        return 2
    try:
        images = find_images(args.images)
        check_images([str(path) for path, _ in images], _limits(args))
    except (InputError, ImageRefused, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with _segmenter(args) as segmenter:
            shown = _segment_all(segmenter, images, args)
            stats = dict(segmenter.stats)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # a signature that breaks the contract, unreadable TLS
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output)
    if shown:
        save_png(output / "predictions.png", contact_sheet(shown))
    kinds = ("masks" if args.masks_only else
             "masks, overlays and cells" if args.cells else "masks and overlays")
    retries = stats["attempts"] - stats["calls"]
    print(f"wrote {len(images)} {kinds} to {output} ({stats['calls']} requests, {retries} "
          f"retried, {stats['response_bytes'] / 2**20:.1f} MiB of answers)")
    return 0


def cell_labels(probabilities: np.ndarray, name: str, seed_threshold: float) -> np.ndarray:
    """`regions.cell_regions` of a two-class [H, W, 1] answer as uint16 labels."""
    from unet_tfx.regions import cell_regions

    if probabilities.shape[-1] != 1:
        raise ValueError(f"--cells: the model answered {probabilities.shape[-1]} classes for "
                         f"{name}; cells are grown from a two-class model's p(cell)")
    cells = cell_regions(probabilities[..., 0], seed_threshold)
    if cells.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"--cells: {name} has {cells.max()} cells, more than a 16-bit PNG holds")
    return cells.astype(np.uint16)


def _segment_all(segmenter, images: list[tuple[Path, str]], args) -> list:
    """Segment in chunks of --batch-size (the client splits a chunk into requests by image
    size), writing each chunk's pictures before the next is read; the contact sheet's rows."""
    output = Path(args.output)
    progress, shown = Progress(len(images), args.progress_every), []
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        names = [str(path) for path, _ in chunk]
        encoded = [path.read_bytes() for path, _ in chunk]
        results = segmenter.segment(
            encoded, names=names, probabilities=not args.masks_only, threshold=args.threshold,
            on_call=lambda call, names=names: progress.advance(len(call.indices),
                                                               names[call.indices[-1]]))
        for (_, name), data, result in zip(chunk, encoded, results, strict=True):
            (output / name).parent.mkdir(parents=True, exist_ok=True)
            save_png(output / f"{name}_mask.png", result.mask)
            if args.masks_only:
                continue
            grey = decode_grey(data)
            picture = overlay(grey, result.probabilities)
            save_png(output / f"{name}_overlay.png", picture)
            if args.cells:
                save_png(output / f"{name}_cells.png",
                         cell_labels(result.probabilities, name, args.cell_seed_threshold))
            if len(shown) < SHEET_ROWS:
                shown.append([grey, picture, result.mask])
    return shown
