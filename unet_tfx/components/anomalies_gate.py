"""A gate that stops the pipeline when ExampleValidator found anomalies in any split."""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils


class DataAnomaliesError(RuntimeError):
    """The examples do not match the schema; the message lists each anomaly."""


def describe_anomalies(anomalies_uri: str, splits: list[str]) -> list[str]:
    """One line per anomaly: split, feature, short and long description."""
    lines = []
    for split in splits:
        path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"[{split}] {feature}: {info.short_description} — {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"[{split}] dataset: {info.short_description} — {info.description}")
    return lines


@tfx.dsl.components.component
def AnomaliesGate(anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Raise DataAnomaliesError, stopping everything downstream, if any split has anomalies."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    found = describe_anomalies(anomalies.uri, splits)
    if found:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies; the run stops before Transform:\n  "
            + "\n  ".join(found)
        )
