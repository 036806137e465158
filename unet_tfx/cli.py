"""`unet-tfx`: ingest data, run the pipeline, and talk to the served model."""

import argparse
import logging
import os
import re
import sys

import unet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from unet_tfx.config import PROFILES, load_profile


def _register_run(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the TFX pipeline on this machine (LocalDagRunner + Beam DirectRunner)",
        description="Run ingestion (if needed) and the whole TFX pipeline locally, then print a "
        "summary: time per component, eval metrics, blessing and the pushed model. Re-runs reuse "
        "unchanged components from the cache.",
        epilog="example: unet-tfx run --profile test --pipeline-root /tmp/tfx",
    )
    _add_config_arguments(parser)
    parser.add_argument("--beam-workers", type=int, default=1, metavar="N",
                        help="Beam DirectRunner worker processes: 1 runs in-process (default, "
                        "fastest on small data), 0 uses every core")
    parser.set_defaults(func=_run)


def _add_config_arguments(parser) -> None:
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                        help="model size and training schedule (default: quick)")
    parser.add_argument("--examples-dir", help="ingested TFRecords (default: out/examples; the "
                        "bundled membrane data is ingested there if missing)")
    parser.add_argument("--pipeline-root", help="TFX artifacts and MLMD (default: out/tfx)")
    parser.add_argument("--serving-dir", help="TF Serving model base (default: out/serving)")
    parser.add_argument("--train-steps", type=int, help="override the profile's training steps")
    parser.add_argument("--min-membrane-dice", type=float,
                        help="override the profile's blessing threshold")


def _config(args):
    return load_profile(
        args.profile, examples_dir=args.examples_dir, pipeline_root=args.pipeline_root,
        serving_dir=args.serving_dir, train_steps=args.train_steps,
        min_membrane_dice=args.min_membrane_dice, beam_args=tuple(getattr(args, "beam_args", ())),
    )


def _run(args) -> int:
    from unet_tfx.pipeline.local_runner import run_local

    config = _config(args)
    summary = run_local(config, beam_workers=args.beam_workers)
    print(summary.format())
    if summary.pushed_to and config.split == "folders":
        from unet_tfx.serving.eval_pictures import write_eval_predictions

        picture = os.path.join(config.pipeline_root, "eval_predictions.png")
        eval_examples = os.path.join(config.examples_dir, "eval")
        write_eval_predictions(summary.pushed_to, eval_examples, picture)
        print(f"eval predictions (image, truth, overlay, prediction): {picture}")
    return 0 if summary.succeeded else 1


def _register_compile(subparsers) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines / Vertex AI (KFP v2 JSON)",
        description="Write the pipeline as a KFP v2 pipeline spec whose steps run in --image. "
        "Paths (--examples-dir, --pipeline-root, --serving-dir) should be ones the cluster "
        "reaches, e.g. gs:// URIs; --beam-arg sends Beam components to Dataflow, Flink or Spark.",
        epilog="example: unet-tfx compile --image gcr.io/acme/unet-tfx:1.0 --profile full "
        "--pipeline-root gs://acme/tfx --examples-dir gs://acme/examples "
        "--serving-dir gs://acme/serving --beam-arg=--runner=DataflowRunner",
    )
    parser.add_argument("--image", required=True, help="container image with unet-tfx installed")
    parser.add_argument("--output", default="unet_tfx_pipeline.json", help="pipeline spec file")
    _add_config_arguments(parser)
    parser.add_argument("--beam-arg", action="append", default=[], dest="beam_args",
                        help="a Beam pipeline option for the data components (repeatable)")
    parser.set_defaults(func=_compile)


def _compile(args) -> int:
    from unet_tfx.pipeline.kubeflow import compile_kubeflow

    path = compile_kubeflow(_config(args), args.image, args.output)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from unet_tfx.ingest.command import register as register_ingest
    from unet_tfx.serving.command import register as register_predict

    parser = argparse.ArgumentParser(
        prog="unet-tfx", description="Train U-Net segmentation models with TFX and ship them to "
        "TensorFlow Serving.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register_ingest(subparsers)
    _register_run(subparsers)
    _register_compile(subparsers)
    register_predict(subparsers)
    return parser


COMPONENT_PROGRESS = re.compile(r"Component \S+ is (running|finished)")


def _quiet_tfx_info(record: logging.LogRecord) -> bool:
    """Of TFX's (absl) INFO chatter keep only component start/finish lines; keep all warnings."""
    return record.levelno > logging.INFO or bool(COMPONENT_PROGRESS.match(record.getMessage()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        logging.getLogger("absl").addFilter(_quiet_tfx_info)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
