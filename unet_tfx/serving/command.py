"""`unet-tfx predict`: segment images with TF Serving (gRPC) or a local SavedModel."""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from unet_tfx.serving.pictures import binary_mask, contact_sheet, decode_grey, overlay, save_png

log = logging.getLogger("unet_tfx.serving")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images with the served model (gRPC) or a local SavedModel",
        description="Send each image to TF Serving's PredictionService (serving_default) or run "
        "a pushed SavedModel in-process, and write per image a binary mask (<stem>_mask.png, "
        "0 membrane / 255 cell) and an overlay (<stem>_overlay.png), plus predictions.png, a "
        "contact sheet of all of them.",
        epilog="examples:\n  unet-tfx predict data/membrane/test/*.png --server localhost:8500\n"
        "  unet-tfx predict data/membrane/test/0.png --model-dir out/serving/unet_membrane",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="TF Serving gRPC address, host:port")
    source.add_argument("--model-dir", help="a SavedModel, or a TF Serving model base whose "
                        "highest version is used")
    parser.add_argument("--model-name", default="unet_membrane", help="model name on the server")
    parser.add_argument("--output", default="out/predictions", help="folder for the pictures")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="cell probability above which a pixel is cell")
    parser.set_defaults(func=run_command)


def _segmenter(args):
    if args.server:
        from unet_tfx.serving.client import ServingClient

        return ServingClient(args.server, args.model_name)
    from unet_tfx.serving.local_model import LocalModel, latest_version

    model_dir = args.model_dir
    if not os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        model_dir = latest_version(model_dir)
    return LocalModel(model_dir)


def _limits(args):
    """The limits the model was exported with (--model-dir), else the defaults it is exported
    with (--server: the server's model folder is not at hand)."""
    from unet_tfx.config import ServingLimits

    if args.server:
        return ServingLimits()
    from unet_tfx.serving.local_model import latest_version
    from unet_tfx.trainer.export import read_serving_limits

    model_dir = args.model_dir
    if not os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        model_dir = latest_version(model_dir)
    return read_serving_limits(model_dir) or ServingLimits()


def check_images(names: list[str], limits) -> None:
    """ImageRefused, naming the file and the limit, for the first image the model would refuse:
    read from its header (and file size), before anything is sent or decoded."""
    from unet_tfx.imaging import TOO_MANY_BYTES, ImageRefused, check_encoded_image

    for name in names:
        size = os.path.getsize(name)
        if size > limits.max_request_bytes:  # not even read
            raise ImageRefused(TOO_MANY_BYTES.format(name, size, limits.max_request_bytes))
        check_encoded_image(Path(name).read_bytes(), limits, name)


def run_command(args) -> int:
    from unet_tfx.imaging import ImageRefused

    try:
        check_images(args.images, _limits(args))
    except ImageRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    segmenter = _segmenter(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.monotonic()
    for done, name in enumerate(args.images, 1):
        encoded = Path(name).read_bytes()
        probabilities = segmenter.segment([encoded])[0]
        grey = decode_grey(encoded)
        stem = Path(name).stem
        mask, picture = binary_mask(probabilities, args.threshold), overlay(grey, probabilities)
        save_png(output / f"{stem}_mask.png", mask)
        save_png(output / f"{stem}_overlay.png", picture)
        rows.append([grey, picture, mask])
        rate = done / (time.monotonic() - start)
        log.info("%d/%d %s  %.2f img/s  ETA %.0fs", done, len(args.images), name, rate,
                 (len(args.images) - done) / rate)
    save_png(output / "predictions.png", contact_sheet(rows))
    print(f"wrote {len(args.images)} masks and overlays to {output}")
    return 0
