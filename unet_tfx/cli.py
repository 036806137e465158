"""`unet-tfx`: ingest data, run the pipeline, and talk to the served model."""

import argparse
import os
import sys

import unet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from unet_tfx import console
from unet_tfx.config import (
    LEARNING_RATE_SCHEDULES,
    LOSS_NAMES,
    PROFILES,
    TARGETS,
    ConfigError,
    load_profile,
)


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
    _add_pairs_arguments(parser)
    parser.set_defaults(func=_run)


def _add_pairs_arguments(parser) -> None:
    pairs = parser.add_argument_group("your own data, without a dataset file")
    pairs.add_argument("--images", metavar="DIR", help="a folder of PNG/TIFF images: ingested "
                       "(if --examples-dir has nothing yet) with sizes and channels read from "
                       "the images; run writes the inferred dataset file to the pipeline root")
    pairs.add_argument("--masks", metavar="DIR", help="their masks, same file stems")
    pairs.add_argument("--eval-count", type=int, metavar="N",
                       help="examples held out for evaluation (default with --images: 0)")


def _per_profile(field: str) -> str:
    """A TrainingConfig field's value in each profile but `test`, e.g. "quick 8, full 16"."""
    values = {name: getattr(profile.training, field) for name, profile in PROFILES.items()
              if name != "test"}
    shown = {name: f"{value:g}" if isinstance(value, float) else str(value)
             for name, value in values.items()}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return ", ".join(f"{name} {value}" for name, value in shown.items())


def _add_config_arguments(parser) -> None:
    parser.add_argument("--dataset", metavar="FILE", help="a dataset file (YAML: name, images, "
                        "masks, image_height, image_width, channels, eval_count, profile; see "
                        "data/membrane/dataset.yaml); its paths default to out/<name>/...")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="model size and training schedule (default: the dataset's, quick)")
    parser.add_argument("--examples-dir", help="ingested TFRecords (default: out/examples, or "
                        "out/<name>/examples for a --dataset; ingested there if missing); "
                        "without --dataset, image size and channels are read from its "
                        "ingest.json")
    parser.add_argument("--pipeline-root", help="TFX artifacts and MLMD (default: out/tfx)")
    parser.add_argument("--serving-dir", help="TF Serving model base (default: out/serving)")
    parser.add_argument("--train-steps", type=int, help="override the profile's training steps")
    parser.add_argument("--batch-size", type=int, metavar="N", help="training patches per step "
                        f"and replica (default: the profile's: {_per_profile('batch_size')})")
    parser.add_argument("--patch-size", type=int, metavar="PX", help="side of the square "
                        "training patches, a multiple of 16 (default: "
                        f"{_per_profile('patch_size')})")
    parser.add_argument("--learning-rate", type=float, metavar="LR",
                        help=f"Adam's (initial) rate (default: {_per_profile('learning_rate')})")
    parser.add_argument("--min-membrane-dice", type=float,
                        help="override the profile's blessing threshold")
    parser.add_argument("--precision",
                        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                        help="Trainer compute precision (default: auto = mixed_float16 on GPUs of "
                        "compute capability >= 7.0, mixed_bfloat16 on CPUs with native bfloat16, "
                        "else float32)")
    parser.add_argument("--mask-threshold", type=float, metavar="P",
                        help="p(cell) above which a pixel is cell in the served masks, the "
                        "Evaluator's metrics and the report (default: "
                        f"{_per_profile('mask_threshold')}; `cv` scores others)")
    parser.add_argument("--cell-seed-threshold", type=float, metavar="P",
                        help="two classes: p(cell) above which a pixel seeds a watershed cell, "
                        "for the Evaluator's watershed_rand_score and the report (default: "
                        f"{_per_profile('cell_seed_threshold')})")
    parser.add_argument("--training-seed", type=int, metavar="S",
                        help="seed of the Trainer's initial weights, patches and augmentation: "
                        "a run is repeatable with the same seed, and another shows how much a "
                        f"result owes to chance (default: {_per_profile('seed')})")
    parser.add_argument("--learning-rate-schedule", choices=LEARNING_RATE_SCHEDULES,
                        help="Adam's rate from --learning-rate: falls to 0 along a half cosine "
                        "over the training steps, or stays constant (default: "
                        f"{_per_profile('learning_rate_schedule')})")
    parser.add_argument("--loss", choices=LOSS_NAMES,
                        help="two-class training loss: mean cell and membrane Dice loss plus "
                        "binary cross-entropy, without it, or the seed's cell-only Dice loss "
                        f"(default: {_per_profile('loss')})")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="batch normalization after every 3x3 conv of the U-Net (default: "
                        f"{_per_profile('batch_norm')}; --no-batch-norm: the classic U-Net)")
    augmentation = parser.add_argument_group(
        "augmentation of training patches (beyond flips and turns; 0 = off, the default)")
    augmentation.add_argument("--rotate-degrees", type=float, metavar="D",
                              help="random rotation within ±D degrees")
    augmentation.add_argument("--scale", type=float, metavar="S",
                              help="random scaling within 1 ± S")
    augmentation.add_argument("--elastic-sigma", type=float, metavar="PX",
                              help="elastic deformation: displacements of std PX pixels on a 3x3 "
                              "grid (the U-Net paper's: 10)")
    augmentation.add_argument("--brightness", type=float, metavar="B",
                              help="brightness shift within ±B standard deviations")
    augmentation.add_argument("--contrast", type=float, metavar="C",
                              help="contrast factor within 1 ± C")
    augmentation.add_argument("--gamma", type=float, metavar="G",
                              help="gamma curve of exponent within exp(±G)")
    augmentation.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                              help="no augmentation at all (not even flips and turns)")
    retraining = parser.add_argument_group("retraining")
    retraining.add_argument("--span-window", type=int, metavar="K",
                            help="train on the newest K spans of --examples-dir (default: 1)")
    retraining.add_argument("--eval-examples", metavar="DIR", help="the trusted eval set every "
                            "model is judged on (default: the oldest span's eval split)")
    retraining.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                            default=None, help="train from scratch, not from the served model")
    retraining.add_argument("--force", action="store_true", default=None,
                            help="train even when the served model was trained on these spans")
    retraining.add_argument("--keep-versions", type=int, metavar="N",
                            help="pushed versions to keep under the serving base (default: 3)")


AUGMENTATION = ("augment", "rotate_degrees", "scale", "elastic_sigma", "brightness", "contrast",
                "gamma")


def _dataset(args):
    """The DatasetSpec of --dataset, or inferred from --images/--masks (run), else None;
    ConfigError for flags it would otherwise drop."""
    from unet_tfx.dataset_spec import infer_dataset, load_dataset

    images = getattr(args, "images", None)
    if images and args.dataset:
        raise ConfigError("--dataset and --images: expected one of them (a dataset file names "
                          "its own folders)")
    if not images and (getattr(args, "masks", None) or getattr(args, "eval_count", None)):
        raise ConfigError("--masks and --eval-count go with --images: expected --images DIR too"
                          " (or --dataset FILE, whose eval_count is in the file)")
    if images:
        return infer_dataset(args.images, args.masks, args.eval_count or 0)
    return load_dataset(args.dataset) if args.dataset else None


def _config(args, spec=None):
    """The PipelineConfig of the flags: sizes from `spec` (a DatasetSpec), else from the
    manifest of --examples-dir (default: out/examples), else the profile's; paths under
    out/<name>/ for a dataset."""
    from unet_tfx.config import PipelineConfig
    from unet_tfx.dataset_spec import from_examples

    data, paths = {}, {}
    if spec is not None:
        data = {"name": f"unet-{spec.name}", "model_name": f"unet_{spec.name}",
                "image_height": spec.image_height, "image_width": spec.image_width,
                "channels": spec.channels, "mask_values": spec.mask_values}
        paths = {key: os.path.join("out", spec.name, folder) for key, folder in
                 (("examples_dir", "examples"), ("pipeline_root", "tfx"),
                  ("serving_dir", "serving"))}
    else:
        data = from_examples(args.examples_dir or PipelineConfig.examples_dir)
    profile = args.profile or (spec.profile if spec else "quick")
    return load_profile(
        profile, **data,
        examples_dir=args.examples_dir or paths.get("examples_dir"),
        pipeline_root=args.pipeline_root or paths.get("pipeline_root"),
        serving_dir=args.serving_dir or paths.get("serving_dir"), train_steps=args.train_steps,
        batch_size=args.batch_size, patch_size=args.patch_size, learning_rate=args.learning_rate,
        min_membrane_dice=args.min_membrane_dice, beam_args=tuple(getattr(args, "beam_args", ())),
        precision=args.precision, span_window=args.span_window,
        eval_examples=args.eval_examples, warm_start=args.warm_start, force=args.force,
        keep_versions=args.keep_versions, mask_threshold=args.mask_threshold,
        cell_seed_threshold=args.cell_seed_threshold, seed=args.training_seed,
        learning_rate_schedule=args.learning_rate_schedule, batch_norm=args.batch_norm,
        loss=args.loss,
        **{key: getattr(args, key) for key in AUGMENTATION},
    )


def _run(args) -> int:
    from unet_tfx.dataset_spec import DATASET_FILE, write_dataset
    from unet_tfx.pipeline.local_runner import check_local_root, run_local

    spec = _dataset(args)
    config = _config(args, spec)
    check_local_root(config)  # before the log file goes under it
    log_file = console.log_to_file(config.pipeline_root)
    if getattr(args, "images", None):
        written = os.path.join(config.pipeline_root, DATASET_FILE)
        write_dataset(spec, written)
        print(f"dataset inferred from {args.images}: {spec.image_height}x{spec.image_width}, "
              f"{spec.channels} channel(s); next time: --dataset {written}")
    summary = run_local(config, beam_workers=args.beam_workers, dataset=spec)
    print(summary.format())
    predictions = _report(summary, config)
    if summary.pushed_to and predictions:  # the report showed the pushed model
        from unet_tfx.serving.eval_pictures import write_eval_predictions

        picture = os.path.join(config.pipeline_root, "eval_predictions.png")
        write_eval_predictions(predictions, picture, config.training.mask_threshold)
        print(f"eval predictions (image, truth, overlay, prediction): {picture}")
    print(f"full log: {log_file}")
    return 0 if summary.succeeded else 1


def _report(summary, config) -> list:
    """Write the run's report.html; return the eval predictions it shows."""
    from unet_tfx.pipeline.report import REPORT, write_report

    path = os.path.join(config.pipeline_root, REPORT)
    predictions = write_report(summary, config, path)
    print(f"report (metrics, training curves, {len(predictions)} eval images with errors): "
          f"{path}")
    return predictions


def _register_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write the HTML report of the last local pipeline run",
        description="Read the last run from ML Metadata under the pipeline root and write "
        "report.html there: metrics and their change against the last blessed model, component "
        "times, training curves, each eval image with truth, prediction and errors, settings. "
        "Give the flags the run was given (they are the settings the page lists).")
    _add_config_arguments(parser)
    _add_pairs_arguments(parser)
    parser.set_defaults(func=_report_command)


def _report_command(args) -> int:
    from unet_tfx.pipeline.history import read_history
    from unet_tfx.pipeline.local_runner import metadata_path

    config = _config(args, _dataset(args))
    try:
        runs = read_history(metadata_path(config))
    except FileNotFoundError as error:
        print(f"unet-tfx report: {error}", file=sys.stderr)
        return 2
    if not runs:
        print(f"unet-tfx report: no runs in {metadata_path(config)}", file=sys.stderr)
        return 2
    _report(runs[-1], config)
    return 0


def _register_cv(subparsers) -> None:
    parser = subparsers.add_parser(
        "cv", help="k-fold cross-validation of a dataset with the pipeline itself",
        description="Shuffle the dataset's examples with --seed, deal them into --folds eval "
        "sets, and run the whole local pipeline once per fold (ingest, Transform, Trainer, "
        "Evaluator) under OUTPUT/fold-K; print each fold's metrics and the mean ± std of every "
        "metric, also written to OUTPUT/cv.json. Finished folds are reused from their caches.",
        epilog="example: unet-tfx cv --folds 5 --profile quick   (the bundled data; on GPU "
        "workers: --profile full)")
    _add_config_arguments(parser)
    _add_pairs_arguments(parser)
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    parser.add_argument("--seed", type=int, default=42, help="shuffling seed (default: 42)")
    parser.add_argument("-o", "--output", help="folder of the folds (default: out/<name>/cv)")
    parser.add_argument("--beam-workers", type=int, default=1, metavar="N",
                        help="Beam DirectRunner worker processes (as for run)")
    parser.set_defaults(func=_cv)


def _cv(args) -> int:
    from unet_tfx.dataset_spec import DEFAULT_DATASET, load_dataset
    from unet_tfx.pipeline.cross_validation import (
        CrossValidationError,
        cross_validate,
        format_results,
    )

    per_fold = [flag for flag, value in (
        ("--examples-dir", args.examples_dir), ("--pipeline-root", args.pipeline_root),
        ("--serving-dir", args.serving_dir), ("--eval-examples", args.eval_examples)) if value]
    if per_fold:
        print(f"unet-tfx cv: {', '.join(per_fold)}: each fold keeps its own examples, pipeline "
              "and models under -o/--output: expected --dataset or --images/--masks for the "
              "data, and -o for the folder", file=sys.stderr)
        return 2
    spec = _dataset(args) or load_dataset(DEFAULT_DATASET)
    config = _config(args, spec)
    output = args.output or os.path.join("out", spec.name, "cv")
    log_file = console.log_to_file(output)
    try:
        record = cross_validate(spec, config, args.folds, args.seed, output, args.beam_workers)
    except (CrossValidationError, ValueError) as error:
        print(f"unet-tfx cv: {error}", file=sys.stderr)
        return 1 if isinstance(error, CrossValidationError) else 2
    print(format_results(record))
    print(f"results: {os.path.join(output, 'cv.json')}\nfull log: {log_file}")
    return 0


def _register_compile(subparsers) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines 2 (YAML) or Vertex AI (JSON)",
        description="Write the pipeline as a KFP pipeline spec whose steps run in --image: "
        "--target kubeflow writes the PipelineSpec YAML (schema 2.1) an open-source KFP 2 "
        "cluster takes; --target vertex writes a Vertex AI PipelineJob JSON. Paths must be ones "
        "every task reaches: gs:// URIs, or absolute paths on a volume mounted in every task. "
        "--beam-arg sends the Beam components to Dataflow, Flink or Spark.",
        epilog="example: unet-tfx compile --target kubeflow --image REGISTRY/unet-tfx:1.0 "
        "--profile full --pipeline-root gs://acme/tfx --examples-dir gs://acme/examples "
        "--serving-dir gs://acme/serving --beam-arg=--runner=DataflowRunner",
    )
    parser.add_argument("--image", required=True, help="container image with unet-tfx installed")
    parser.add_argument("--target", default="kubeflow", choices=TARGETS,
                        help="orchestrator (default: kubeflow)")
    parser.add_argument("-o", "--output", help="pipeline spec file (default: "
                        "unet_tfx_pipeline.yaml for kubeflow, unet_tfx_pipeline.json for vertex)")
    _add_config_arguments(parser)
    parser.add_argument("--beam-arg", action="append", default=[], dest="beam_args",
                        help="a Beam pipeline option for the data components (repeatable)")
    resources = parser.add_argument_group("resources (0: the cluster's default)")
    resources.add_argument("--trainer-cpus", type=float, help="Trainer CPU limit, cores")
    resources.add_argument("--trainer-memory-gb", type=float, help="Trainer memory limit, GiB")
    resources.add_argument("--trainer-gpus", type=int, help="GPUs for the Trainer")
    resources.add_argument("--trainer-gpu-type", help="GPU model in Vertex's names, e.g. "
                           "NVIDIA_L4 or NVIDIA_TESLA_T4 (Kubeflow asks for nvidia.com/gpu)")
    resources.add_argument("--beam-cpus", type=float, help="CPU limit of the Beam components")
    resources.add_argument("--beam-memory-gb", type=float,
                           help="memory limit of the Beam components, GiB")
    vertex = parser.add_argument_group("Vertex AI training (--target vertex)")
    vertex.add_argument("--trainer", default="pipeline", choices=("pipeline", "vertex-training"),
                        help="vertex-training: the Trainer runs as a Vertex AI custom job")
    vertex.add_argument("--project", default="", help="Google Cloud project of the custom job")
    vertex.add_argument("--region", default="", help="region of the custom job")
    vertex.add_argument("--vertex-machine-type", help="machine of each worker pool "
                        "(default: g2-standard-8, with --trainer-gpus NVIDIA_L4)")
    vertex.add_argument("--vertex-workers", type=int,
                        help="workers beside the chief: MultiWorkerMirroredStrategy (default 0)")
    parser.set_defaults(func=_compile)


RESOURCE_FIELDS = ("trainer_cpus", "trainer_memory_gb", "trainer_gpus", "trainer_gpu_type",
                   "beam_cpus", "beam_memory_gb", "vertex_machine_type", "vertex_workers")


def _compile(args) -> int:
    from unet_tfx.pipeline.kubeflow import SUFFIXES, compile_pipeline

    vertex_only = [flag for flag, value in (
        ("--project", args.project), ("--region", args.region),
        ("--vertex-machine-type", args.vertex_machine_type),
        ("--vertex-workers", args.vertex_workers)) if value]
    if vertex_only and args.trainer != "vertex-training":
        print(f"unet-tfx compile: {', '.join(vertex_only)}: settings of the Vertex AI custom "
              "job: expected --target vertex --trainer vertex-training with them",
              file=sys.stderr)
        return 2
    config = _config(args, _dataset(args)).replace(**{
        k: getattr(args, k) for k in RESOURCE_FIELDS if getattr(args, k) is not None})
    output = args.output or f"unet_tfx_pipeline{SUFFIXES[args.target]}"
    try:
        compile_pipeline(config, args.image, output, args.target, args.trainer, args.project,
                         args.region)
    except ValueError as error:
        print(f"unet-tfx compile: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output} ({args.target})")
    return 0


def _register_history(subparsers) -> None:
    parser = subparsers.add_parser(
        "history", help="one line per local pipeline run, and a plot of the gated metric",
        description="Read ML Metadata under --pipeline-root and print, per run: when, which "
        "spans ExampleGen read, the gated metric and its change against the served model, "
        "blessed or not, the version pushed. Writes history.png beside the metadata.")
    parser.add_argument("--pipeline-root", default="out/tfx", help="default: out/tfx")
    parser.set_defaults(func=_history)


def _history(args) -> int:
    from unet_tfx.config import PipelineConfig
    from unet_tfx.pipeline.history import format_history, plot_history, read_history
    from unet_tfx.pipeline.local_runner import metadata_path

    try:
        runs = read_history(metadata_path(PipelineConfig(pipeline_root=args.pipeline_root)))
    except FileNotFoundError as error:
        print(f"unet-tfx history: {error}", file=sys.stderr)
        return 2
    print(format_history(runs))
    picture = os.path.join(args.pipeline_root, "history.png")
    plot_history(runs, picture)
    print(f"plot: {picture}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from unet_tfx.ingest.command import register as register_ingest
    from unet_tfx.pipeline.submit import register as register_submit
    from unet_tfx.serving.command import register as register_predict
    from unet_tfx.serving.deploy import register as register_serving_config

    parser = argparse.ArgumentParser(
        prog="unet-tfx", description="Train U-Net segmentation models with TFX and ship them to "
        "TensorFlow Serving.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register_ingest(subparsers)
    _register_run(subparsers)
    _register_compile(subparsers)
    register_submit(subparsers)
    _register_history(subparsers)
    _register_report(subparsers)
    _register_cv(subparsers)
    register_predict(subparsers)
    register_serving_config(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors answer without TensorFlow
    console.silence_library_noise()  # then, before anything imports TensorFlow or Google's
    from unet_tfx.dataset_spec import DatasetError
    from unet_tfx.ingest.errors import IngestError

    console.setup(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, IngestError) as error:  # a setting or data the user gave
        print(f"unet-tfx {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
