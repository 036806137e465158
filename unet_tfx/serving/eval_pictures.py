"""The pushed model on the eval split: its predictions, and a picture of image, truth, overlay
and prediction."""

import numpy as np

from unet_tfx import features as F
from unet_tfx.config import TrainingConfig
from unet_tfx.ingest import read_examples
from unet_tfx.ingest.decode import encode_png
from unet_tfx.serving.local_model import LocalModel
from unet_tfx.serving.pictures import binary_mask, contact_sheet, overlay, save_png, visible


def eval_predictions(saved_model_dir: str, eval_examples: str) -> list[tuple[dict, np.ndarray]]:
    """Each eval example with the probabilities `serving_default` answers for its image."""
    model = LocalModel(saved_model_dir)
    return [(example, model.segment([encode_png(example[F.IMAGE])])[0])
            for example in read_examples(eval_examples)]


def write_eval_predictions(predictions: list[tuple[dict, np.ndarray]], path: str,
                           threshold: float = TrainingConfig.mask_threshold) -> int:
    """Write the contact sheet of `eval_predictions` to `path` (atomically), the masks at
    p(cell) > `threshold`; return its rows."""
    rows = []
    for example, probabilities in predictions:
        image = example[F.IMAGE]
        classes = max(2, probabilities.shape[-1])
        rows.append([image, visible(example[F.MASK], classes), overlay(image, probabilities),
                     visible(binary_mask(probabilities, threshold), classes)])
    save_png(path, contact_sheet(rows))
    return len(rows)
