"""`unet-tfx report`: one self-contained HTML page about a pipeline run, for a person to look at.

Metrics with their change against the last blessed model, the components' states and times, the
Trainer's training curves, and for every eval image the input, the truth, the prediction and an
error map (false membrane red, false cell blue) with its membrane Dice and Rand score (two
classes: also the watershed cells and their Rand score), then the run's settings. Pictures are
embedded as PNG data URIs, so the page travels as one file.
"""

import base64
import dataclasses
import datetime
import html
import os

import numpy as np
import tensorflow as tf

from unet_tfx.components.example_gen import trusted_eval
from unet_tfx.config import PipelineConfig
from unet_tfx.files import write_atomically
from unet_tfx.ingest.decode import encode_png
from unet_tfx.pipeline.run_summary import RunSummary
from unet_tfx.regions import cell_regions
from unet_tfx.serving.eval_pictures import eval_predictions
from unet_tfx.serving.pictures import binary_mask, cell_picture, visible
from unet_tfx.trainer.metrics import MeanClassDice, MembraneDice, RandScore, WatershedRandScore

REPORT = "report.html"
FALSE_MEMBRANE = (230, 40, 40)  # truth cell, predicted membrane
FALSE_CELL = (40, 110, 240)  # truth membrane, predicted cell
# Metrics where lower is better: their change is coloured the other way round.
LOWER_IS_BETTER = ("variation_of_information",)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.better { color: #137333; } .worse { color: #c5221f; }
img { max-width: 100%; }
.images img { width: 192px; margin-right: 6px; image-rendering: pixelated; }
.legend span { display: inline-block; width: 12px; height: 12px; vertical-align: middle; }
"""


def error_map(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
              num_classes: int = 2) -> np.ndarray:
    """RGB: the image dimmed to grey, false membrane pixels red, false cell pixels blue (K class
    indices: every wrong pixel red)."""
    grey = image if image.ndim == 2 else image.reshape(image.shape[:2] + (-1,)).mean(axis=-1)
    rgb = np.repeat((0.5 * grey.astype(np.float32))[..., None], 3, axis=-1)
    truth = truth.reshape(grey.shape)
    if num_classes > 2:
        rgb[truth != predicted] = FALSE_MEMBRANE
        return rgb.astype(np.uint8)
    truth_cell, predicted_cell = truth > 0, predicted > 0
    rgb[truth_cell & ~predicted_cell] = FALSE_MEMBRANE
    rgb[~truth_cell & predicted_cell] = FALSE_CELL
    return rgb.astype(np.uint8)


def newest_artifact(pipeline_root: str, component: str, output: str) -> str | None:
    """The newest artifact folder of `component`'s `output` (TFX names them by execution id)."""
    folders = tf.io.gfile.glob(os.path.join(pipeline_root, component, output, "*"))
    numbered = [f for f in folders if os.path.basename(f.rstrip("/")).isdigit()]
    return max(numbered, key=lambda f: int(os.path.basename(f.rstrip("/"))), default=None)


def run_model(summary: RunSummary, pipeline_root: str) -> str | None:
    """The SavedModel of `summary`'s run: the pushed one, else the Trainer's newest candidate."""
    if summary.pushed_to:
        return summary.pushed_to
    candidate = newest_artifact(pipeline_root, "Trainer", "model")
    return candidate and os.path.join(candidate, "Format-Serving")


def _img(pixels: np.ndarray, alt: str) -> str:
    data = base64.b64encode(encode_png(pixels)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def score(metric, pairs) -> float:
    """A two-class `metric` over (truth, probabilities) pairs of whole images: `truth` a [H, W]
    mask (0 membrane), `probabilities` [H, W, 1]."""
    for truth, probabilities in pairs:
        metric.update_state((truth > 0).astype(np.float32)[None, ..., None], probabilities[None])
    return float(metric.result())


def _metrics_table(summary: RunSummary) -> str:
    rows = []
    for name, value in sorted(summary.metrics.items()):
        diff = summary.baseline_diffs.get(name)
        change = ""
        if diff is not None:
            better = diff < 0 if name in LOWER_IS_BETTER else diff > 0
            change = f'<span class="{"better" if better else "worse"}">{diff:+.4f}</span>'
        rows.append(f"<tr><td>{html.escape(name)}</td><td class=num>{value:.4f}</td>"
                    f"<td class=num>{change or '-'}</td></tr>")
    return ("<table><tr><th>metric (eval split)</th><th>value</th>"
            "<th>vs last blessed</th></tr>" + "".join(rows) + "</table>")


def _components_table(summary: RunSummary) -> str:
    rows = "".join(f"<tr><td>{html.escape(c.node)}</td><td>{c.state}</td>"
                   f"<td class=num>{c.seconds:.1f}</td></tr>" for c in summary.components)
    return f"<table><tr><th>component</th><th>state</th><th>seconds</th></tr>{rows}</table>"


def _settings_table(config: PipelineConfig) -> str:
    flat = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in flat.items())
    return f"<table>{rows}</table>"


def _image_rows(predictions: list, threshold: float, seed_threshold: float) -> tuple[str, int]:
    """The eval images' HTML (cell where p(cell) > `threshold`; watershed cells seeded where
    p(cell) > `seed_threshold`) and the model's number of classes."""
    rows, classes = [], 2
    for example, probabilities in predictions:
        image, truth = example["image"], example["mask"]
        predicted = binary_mask(probabilities, threshold)
        classes, cells = max(2, probabilities.shape[-1]), ""
        if classes == 2:
            dice = score(MembraneDice(threshold=threshold), [(truth, probabilities)])
            rand = score(RandScore(threshold=threshold), [(truth, probabilities)])
            grown = score(WatershedRandScore(seed_threshold=seed_threshold),
                          [(truth, probabilities)])
            scores = f"membrane Dice {dice:.3f}, Rand {rand:.3f}, watershed Rand {grown:.3f}"
            cells = _img(cell_picture(cell_regions(probabilities[..., 0], seed_threshold)),
                         "watershed cells")
        else:
            metric = MeanClassDice(classes)
            metric.update_state(np.eye(classes, dtype=np.float32)[truth][None],
                                probabilities[None])
            scores = f"mean class Dice {float(metric.result()):.3f}"
        rows.append(
            f"<h3>{html.escape(example['id'])}: {scores}</h3>"
            f'<div class="images">{_img(image, "image")}'
            f'{_img(visible(truth, classes), "truth")}'
            f'{_img(visible(predicted, classes), "prediction")}'
            f'{_img(error_map(image, truth, predicted, classes), "errors")}{cells}</div>')
    return "".join(rows), classes


def write_report(summary: RunSummary, config: PipelineConfig, path: str) -> list:
    """Write the page for `summary`'s run to `path` (via a temporary file); return the eval
    predictions it shows (`eval_predictions`): the pushed model's, else the Trainer's newest
    candidate's."""
    root = config.pipeline_root
    model_dir = run_model(summary, root)
    curves = newest_artifact(root, "Trainer", "model_run")
    curves = curves and os.path.join(curves, "training_curves.png")
    started = datetime.datetime.fromtimestamp(summary.started, datetime.timezone.utc)
    parts = [
        f"<h1>{html.escape(config.name)}: run of {started:%Y-%m-%d %H:%M} UTC</h1>",
        f"<p>blessed: <b>{summary.blessed}</b>; pushed: "
        f"<b>{html.escape(summary.pushed_to or 'nothing')}</b>; wall time "
        f"{summary.wall_seconds:.0f} s"
        + (f"; <b>failed</b>: {html.escape(str(summary.error))}" if summary.error else "")
        + "</p>",
        "<h2>Metrics</h2>", _metrics_table(summary),
        "<h2>Components</h2>", _components_table(summary),
    ]
    if curves and tf.io.gfile.exists(curves):
        with tf.io.gfile.GFile(curves, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts += ["<h2>Training curves</h2>",
                  f'<img alt="training curves" src="data:image/png;base64,{data}">']
    predictions = []
    eval_examples = trusted_eval(config.examples_dir, config.eval_examples)
    if model_dir and tf.io.gfile.isdir(model_dir) and tf.io.gfile.isdir(eval_examples):
        predictions = eval_predictions(model_dir, eval_examples)
        rows, classes = _image_rows(predictions, config.training.mask_threshold,
                                    config.training.cell_seed_threshold)
        legend = (f'<span style="background: rgb{FALSE_MEMBRANE}"></span> false membrane '
                  f'<span style="background: rgb{FALSE_CELL}"></span> false cell'
                  if classes == 2 else
                  f'<span style="background: rgb{FALSE_MEMBRANE}"></span> wrong class '
                  f"(classes 0-{classes - 1} shown dark to bright)")
        parts += ["<h2>Eval images</h2>",
                  f'<p class="legend">image, truth, prediction, errors: {legend} '
                  f"(model {html.escape(model_dir)})</p>", rows]
    parts += ["<h2>Settings</h2>", _settings_table(config)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(config.name)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    write_atomically(path, page)
    return predictions
