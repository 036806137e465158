"""`unet-tfx cv`: k-fold cross-validation of a dataset with the pipeline itself.

The ids are shuffled with a seed and dealt into k folds; fold i is ingested with its ids as the
eval split, and the whole local pipeline (Transform, Trainer, Evaluator) runs on it under
`<output>/fold-i/`. Each fold's Evaluator metrics are collected, and their mean and standard
deviation written to `<output>/cv.json`. A re-run reuses the finished folds from their caches.

Two classes: each fold's model is also scored at several mask thresholds (`THRESHOLDS`) and
watershed seed thresholds (`SEED_THRESHOLDS`) with the Evaluator's own metric classes, so the
thresholds a profile serves and evaluates with are chosen by CV too.
"""

import dataclasses
import json
import logging
import os
import random
import time

import numpy as np
import tensorflow as tf

from unet_tfx.config import PipelineConfig
from unet_tfx.dataset_spec import DatasetSpec
from unet_tfx.files import write_atomically
from unet_tfx.ingest.driver import MANIFEST
from unet_tfx.ingest.sources import find_sources, natural_key
from unet_tfx.pipeline.local_runner import run_local
from unet_tfx.pipeline.report import run_model, score
from unet_tfx.serving.eval_pictures import eval_predictions
from unet_tfx.trainer.metrics import MeanDice, MembraneDice, RandScore, WatershedRandScore

log = logging.getLogger("unet_tfx.pipeline")
RESULTS = "cv.json"
# The columns printed per fold (every metric is in cv.json).
SHOWN = ("membrane_dice", "mean_dice", "rand_score", "variation_of_information",
         "watershed_rand_score")
# p(cell) thresholds each fold's model is scored at, and the metrics (Evaluator's names).
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
SWEPT = {"membrane_dice": MembraneDice, "mean_dice": MeanDice, "rand_score": RandScore}
# p(cell) seed thresholds of the watershed cells each fold's model is scored at (0.5: the mask's
# own components, grown until they tile the image).
SEED_THRESHOLDS = (0.5, 0.9, 0.95, 0.97, 0.99)


class CrossValidationError(RuntimeError):
    """A fold's pipeline run failed; the message names the fold and its folder."""


def fold_ids(ids: list[str], folds: int, seed: int) -> list[list[str]]:
    """`ids` shuffled with `seed` and dealt into `folds` disjoint eval sets covering them all."""
    if not 2 <= folds <= len(ids):
        raise ValueError(f"folds {folds}: expected 2 to {len(ids)} (the number of examples)")
    shuffled = sorted(ids, key=natural_key)
    random.Random(seed).shuffle(shuffled)
    return [sorted(shuffled[k::folds], key=natural_key) for k in range(folds)]


def summarize_folds(per_fold: list[dict]) -> dict:
    """{metric: {"mean", "std"}} over the folds (std with k - 1 degrees of freedom)."""
    names = sorted(set.intersection(*(set(m) for m in per_fold)))
    return {name: {"mean": float(np.mean([m[name] for m in per_fold])),
                   "std": float(np.std([m[name] for m in per_fold], ddof=1))} for name in names}


def threshold_sweeps(model_dir: str, eval_examples: str) -> dict[str, dict]:
    """A two-class model on the eval examples, scored over all images as the Evaluator scores
    it: {"thresholds": {threshold: {metric: value}}} with the `SWEPT` metrics at each mask
    threshold, {"seeds": {seed: {"watershed_rand_score": value}}} at each seed threshold."""
    pairs = [(example["mask"], p) for example, p in eval_predictions(model_dir, eval_examples)]
    return {
        "thresholds": {f"{t:g}": {name: score(cls(threshold=t), pairs)
                                  for name, cls in SWEPT.items()} for t in THRESHOLDS},
        "seeds": {f"{s:g}": {"watershed_rand_score": score(
            WatershedRandScore(seed_threshold=s), pairs)} for s in SEED_THRESHOLDS},
    }


def check_earlier_folds(output: str, plan: list[list[str]]) -> None:
    """ValueError if a fold folder under `output` holds another plan's eval split (another
    --seed, --folds or dataset): its caches would be reported as this plan's folds."""
    for k, eval_ids in enumerate(plan, start=1):
        manifest = os.path.join(output, f"fold-{k}", "examples", MANIFEST)
        if not tf.io.gfile.exists(manifest):
            continue
        with tf.io.gfile.GFile(manifest) as f:
            earlier = json.load(f).get("splits", {}).get("eval", {}).get("ids")
        if earlier != eval_ids:
            raise ValueError(f"{os.path.dirname(manifest)}: fold {k} of an earlier cv with other "
                             f"eval ids ({', '.join(earlier or [])}; this one: "
                             f"{', '.join(eval_ids)}): expected a new --output for another "
                             "--seed, --folds or dataset (or delete the old one)")


def cross_validate(dataset: DatasetSpec, config: PipelineConfig, folds: int, seed: int,
                   output: str, beam_workers: int = 1) -> dict:
    """Run the pipeline once per fold; return (and write to <output>/cv.json) every fold's ids
    and metrics and their mean ± std."""
    ids = [ref.id for ref in find_sources(**dataset.sources())]
    plan = fold_ids(ids, folds, seed)
    check_earlier_folds(output, plan)
    results, started = [], time.monotonic()
    for k, eval_ids in enumerate(plan, start=1):
        folder = os.path.join(output, f"fold-{k}")
        fold_config = dataclasses.replace(
            config, examples_dir=os.path.join(folder, "examples"),
            pipeline_root=os.path.join(folder, "tfx"), serving_dir=os.path.join(folder, "serving"))
        summary = run_local(fold_config, beam_workers, dataclasses.replace(
            dataset, eval_count=0, eval_ids=tuple(eval_ids)))
        if not summary.succeeded:
            raise CrossValidationError(f"fold {k} of {folds} ({folder}) failed: {summary.error}")
        result = {"fold": k, "eval_ids": eval_ids, "metrics": summary.metrics}
        if config.num_classes == 2:
            result.update(threshold_sweeps(run_model(summary, fold_config.pipeline_root),
                                           os.path.join(fold_config.examples_dir, "eval")))
        results.append(result)
        elapsed = time.monotonic() - started
        log.info("fold %d/%d: %s; %.0f s, ETA %.0f s", k, folds,
                 ", ".join(f"{n} {summary.metrics[n]:.4f}" for n in SHOWN
                           if n in summary.metrics), elapsed, elapsed / k * (folds - k))
    record = {"dataset": dataset.name, "folds": folds, "seed": seed,
              "profile_training": dataclasses.asdict(config.training), "per_fold": results,
              "summary": summarize_folds([r["metrics"] for r in results])}
    if config.num_classes == 2:
        for sweep, key in (("thresholds", "threshold_summary"), ("seeds", "seed_summary")):
            record[key] = {t: summarize_folds([r[sweep][t] for r in results])
                           for t in results[0][sweep]}
    tf.io.gfile.makedirs(output)
    path = os.path.join(output, RESULTS)
    write_atomically(path, json.dumps(record, indent=2) + "\n")
    return record


def format_results(record: dict) -> str:
    """A table: one line per fold, then mean ± std of every metric."""
    shown = [n for n in SHOWN if n in record["summary"]]
    lines = [f"{'fold':<6}" + "".join(f"{n:>26}" for n in shown)]
    for fold in record["per_fold"]:
        lines.append(f"{fold['fold']:<6}" + "".join(f"{fold['metrics'][n]:>26.4f}" for n in shown))
    lines.append(f"{record['folds']}-fold cross-validation, mean ± std:")
    lines += [f"  {name:<26} {s['mean']:.4f} ± {s['std']:.4f}"
              for name, s in record["summary"].items()]
    if "threshold_summary" in record:
        lines.append("the same models with the mask at other p(cell) thresholds, mean ± std:")
        lines.append(f"  {'threshold':<11}" + "".join(f"{n:>20}" for n in SWEPT))
        for threshold, summary in record["threshold_summary"].items():
            lines.append(f"  {threshold:<11}" + "".join(
                f"{summary[n]['mean']:>11.4f} ± {summary[n]['std']:.4f}" for n in SWEPT))
        lines.append("their watershed cells at other seed thresholds (--cell-seed-threshold), "
                     "mean ± std:")
        lines.append(f"  {'seed':<11}{'watershed_rand_score':>20}")
        for seed, summary in record["seed_summary"].items():
            s = summary["watershed_rand_score"]
            lines.append(f"  {seed:<11}{s['mean']:>11.4f} ± {s['std']:.4f}")
    return "\n".join(lines)
