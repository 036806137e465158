"""The raw examples' schema, derived from the pipeline config at run time.

ExampleValidator checks every split against it; anomalies stop the run before Transform. The
schema is built in code from the configured image size, so it travels with the package and a
compiled Kubeflow/Vertex spec names no file of the compiling machine.
"""

import os

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx
from tfx.utils import io_utils

from unet_tfx import features as F

SCHEMA_FILE = "schema.pbtxt"  # the name TFX's SchemaGen/ImportSchemaGen write


def build_schema(image_height: int, image_width: int) -> schema_pb2.Schema:
    """Every feature present once per example; `height`/`width` pinned to the configured size;
    `mask` not required at serving time."""
    schema = schema_pb2.Schema(default_environment=["TRAINING", "SERVING"])
    sizes = {F.HEIGHT: image_height, F.WIDTH: image_width}
    for name in (F.IMAGE, F.MASK, F.HEIGHT, F.WIDTH, F.ID):
        feature = schema.feature.add(name=name)
        feature.presence.min_fraction, feature.presence.min_count = 1.0, 1
        feature.shape.dim.add(size=1)
        if name in sizes:
            feature.type = schema_pb2.INT
            feature.int_domain.min = feature.int_domain.max = sizes[name]
        else:
            feature.type = schema_pb2.BYTES
        if name == F.MASK:
            feature.not_in_environment.append("SERVING")
    return schema


@tfx.dsl.components.component
def ConfiguredSchemaGen(
    schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
    image_height: tfx.dsl.components.Parameter[int],
    image_width: tfx.dsl.components.Parameter[int],
) -> None:
    """Write the schema for images of `image_height` x `image_width` (what ImportSchemaGen
    would import from a file)."""
    io_utils.write_pbtxt_file(os.path.join(schema.uri, SCHEMA_FILE),
                              build_schema(image_height, image_width))
