"""What one pipeline run did, read back from ML Metadata: per-component state and time, eval
metrics, blessing and the pushed model."""

import dataclasses
import time

import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

DIFF_SUFFIX = "_diff"
STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


@dataclasses.dataclass
class ComponentRun:
    node: str
    state: str  # COMPLETE, CACHED, FAILED, ...
    seconds: float


@dataclasses.dataclass
class RunSummary:
    components: list
    metrics: dict
    # Candidate minus last blessed model, per metric; empty when there was no baseline.
    baseline_diffs: dict
    blessed: bool | None
    pushed_to: str | None
    wall_seconds: float
    error: BaseException | None = None
    spans: list = dataclasses.field(default_factory=list)  # the spans ExampleGen read
    started: float = 0.0  # seconds since the epoch

    @property
    def succeeded(self) -> bool:
        return self.error is None

    @property
    def baseline_compared(self) -> bool:
        return bool(self.baseline_diffs)

    def format(self) -> str:
        lines = [f"{'component':<32} {'state':<9} {'seconds':>8}"]
        lines += [f"{c.node:<32} {c.state:<9} {c.seconds:8.1f}" for c in self.components]
        for name, value in sorted(self.metrics.items()):
            diff = self.baseline_diffs.get(name)
            versus = f"  ({diff:+.4f} vs last blessed)" if diff is not None else ""
            lines.append(f"{name}: {value:.4f}{versus}")
        if self.spans:
            lines.append(f"spans: {', '.join(map(str, self.spans))}")
        lines.append(f"blessed: {self.blessed}")
        lines.append(f"pushed to: {self.pushed_to or 'nothing pushed'}")
        lines.append(f"wall time: {self.wall_seconds:.0f} s")
        if self.error is not None:
            lines.append(f"FAILED: {self.error}")
        return "\n".join(lines)


def pipeline_runs(store) -> list:
    """The pipeline_run contexts of the store, oldest first."""
    return sorted(store.get_contexts_by_type("pipeline_run"),
                  key=lambda c: c.create_time_since_epoch)


def _node_name(store, execution_id: int, node_type_id: int) -> str:
    contexts = store.get_contexts_by_execution(execution_id)
    name = next((c.name for c in contexts if c.type_id == node_type_id), "?")
    return name.split(".", 1)[-1]


def _outputs(store, execution_id: int) -> dict:
    """Output artifacts of one execution, by artifact type name."""
    events = store.get_events_by_execution_ids([execution_id])
    ids = [e.artifact_id for e in events if e.type in
           (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = store.get_artifacts_by_id(ids)
    types = {t.id: t.name for t in store.get_artifact_types_by_id(
        list({a.type_id for a in artifacts}))}
    return {types[a.type_id]: a for a in artifacts}


def eval_metrics(uri: str) -> tuple[dict, dict]:
    """Overall-slice metrics of the candidate, and their differences to the baseline."""
    result = tfma.load_eval_result(uri)
    _, slice_metrics = result.slicing_metrics[0]
    # JSON spells NaN and infinities as strings ("NaN"): float() reads both forms.
    values = {name: float(value["doubleValue"])
              for name, value in slice_metrics.get("", {}).get("", {}).items()
              if "doubleValue" in value}
    metrics = {k: v for k, v in values.items() if not k.endswith(DIFF_SUFFIX)}
    diffs = {k[: -len(DIFF_SUFFIX)]: v for k, v in values.items() if k.endswith(DIFF_SUFFIX)}
    return metrics, diffs


def summarize_run(connection_config, started: float, error=None) -> RunSummary:
    """Summarize the latest run recorded in the MLMD store of `connection_config`."""
    store = metadata_store.MetadataStore(connection_config)
    runs = pipeline_runs(store)
    summary = summarize(store, runs[-1]) if runs else RunSummary([], {}, {}, None, None, 0.0)
    return dataclasses.replace(summary, wall_seconds=time.time() - started, error=error)


def summarize(store, run) -> RunSummary:
    """What the pipeline run `run` (an MLMD context) did, from its executions' outputs."""
    components, metrics, diffs, blessed, pushed_to, spans = [], {}, {}, None, None, []
    node_type = store.get_context_type("node")
    executions = sorted(store.get_executions_by_context(run.id),
                        key=lambda e: e.create_time_since_epoch)
    for execution in executions:
        node = _node_name(store, execution.id, node_type.id)
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1e3
        components.append(ComponentRun(node, STATE_NAMES.get(execution.last_known_state, "?"),
                                       seconds))
        outputs = _outputs(store, execution.id)
        if "Examples" in outputs and node == "ImportExampleGen":
            text = outputs["Examples"].custom_properties["spans"].string_value
            spans = [int(s) for s in text.split(",")] if text else []
        if "ModelEvaluation" in outputs:
            metrics, diffs = eval_metrics(outputs["ModelEvaluation"].uri)
        if "ModelBlessing" in outputs:
            blessed = outputs["ModelBlessing"].custom_properties["blessed"].int_value == 1
        if "PushedModel" in outputs:
            props = outputs["PushedModel"].custom_properties
            if props["pushed"].int_value == 1:
                pushed_to = props["pushed_destination"].string_value
    wall = (executions[-1].last_update_time_since_epoch - run.create_time_since_epoch) / 1e3 \
        if executions else 0.0
    return RunSummary(components, metrics, diffs, blessed, pushed_to, wall, spans=spans,
                      started=run.create_time_since_epoch / 1e3)
