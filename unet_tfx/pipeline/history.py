"""`unet-tfx history`: one line per pipeline run from ML Metadata, and a plot of the gated
metric over runs."""

import datetime
import os

from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx

from unet_tfx.components.evaluation import GATED_METRIC
from unet_tfx.pipeline.run_summary import RunSummary, pipeline_runs, summarize
from unet_tfx.trainer.progress import save_figure


def read_history(metadata_file: str) -> list[RunSummary]:
    """Every run recorded in the local MLMD store, oldest first."""
    if not os.path.exists(metadata_file):
        raise FileNotFoundError(f"{metadata_file}: no ML Metadata store (run the pipeline first)")
    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_file))
    return [summarize(store, run) for run in pipeline_runs(store)]


def format_history(runs: list[RunSummary], metric: str = GATED_METRIC) -> str:
    lines = [f"{'started (UTC)':<19}  {'spans':<7} {metric:>13} {'vs served':>9}  "
             f"{'blessed':<7}  pushed"]
    for run in runs:
        when = datetime.datetime.fromtimestamp(run.started, datetime.timezone.utc)
        value, diff = run.metrics.get(metric), run.baseline_diffs.get(metric)
        lines.append(
            f"{when:%Y-%m-%d %H:%M:%S}  {','.join(map(str, run.spans)) or '-':<7} "
            f"{'-' if value is None else f'{value:.4f}':>13} "
            f"{'-' if diff is None else f'{diff:+.4f}':>9}  "
            f"{'-' if run.blessed is None else 'yes' if run.blessed else 'NO':<7}  "
            f"{os.path.basename(run.pushed_to) if run.pushed_to else '-'}")
    return "\n".join(lines)


def plot_history(runs: list[RunSummary], path: str, metric: str = GATED_METRIC) -> None:
    """The gated metric per run: pushed runs filled, blessed-not-pushed hollow, refused red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(runs) + 2), 3.2))
    scored = [(i + 1, run) for i, run in enumerate(runs) if metric in run.metrics]
    ax.plot([i for i, _ in scored], [r.metrics[metric] for _, r in scored], color="grey",
            zorder=1)
    for i, run in scored:
        style = ({"color": "tab:blue"} if run.pushed_to else
                 {"facecolors": "none", "edgecolors": "tab:blue"} if run.blessed else
                 {"color": "tab:red", "marker": "x"})
        ax.scatter([i], [run.metrics[metric]], zorder=2, **style)
        ax.annotate(",".join(map(str, run.spans)), (i, run.metrics[metric]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("run (label: spans read)")
    ax.set_ylabel(metric)
    ax.set_title("filled: pushed, hollow: blessed, x: not blessed")
    save_figure(fig, path)
