"""A picture of the pushed model on the eval split: image, truth, overlay and prediction."""

from unet_tfx import features as F
from unet_tfx.ingest import read_examples
from unet_tfx.ingest.decode import encode_png
from unet_tfx.serving.local_model import LocalModel
from unet_tfx.serving.pictures import binary_mask, contact_sheet, overlay, save_png, visible


def write_eval_predictions(saved_model_dir: str, eval_examples: str, path: str) -> int:
    """Write the contact sheet to `path` (atomically); return how many examples it shows."""
    model = LocalModel(saved_model_dir)
    rows = []
    for example in read_examples(eval_examples):
        image = example[F.IMAGE]
        probabilities = model.segment([encode_png(image)])[0]
        classes = max(2, probabilities.shape[-1])
        rows.append([image, visible(example[F.MASK], classes), overlay(image, probabilities),
                     visible(binary_mask(probabilities), classes)])
    save_png(path, contact_sheet(rows))
    return len(rows)
