"""The Evaluator's TFMA config: Dice, IoU and cell-region metrics on whole eval images, and the
blessing gate."""

import json

import tensorflow_model_analysis as tfma

from unet_tfx import features as F
from unet_tfx.config import TrainingConfig

METRICS_MODULE = "unet_tfx.trainer.metrics"
# TFMA reports a tf_keras metric under its class name in snake case.
GATED_METRIC = "membrane_dice"
REPORTED_METRICS = ("MembraneDice", "CellDice", "MeanDice", "PixelAccuracy", "MembraneIou",
                    "CellIou", "RandScore", "VariationOfInformation", "WatershedRandScore")


def eval_config(min_membrane_dice: float, max_dice_drop: float, num_classes: int = 2,
                threshold: float = TrainingConfig.mask_threshold,
                seed_threshold: float = TrainingConfig.cell_seed_threshold) -> tfma.EvalConfig:
    """Raw examples in, labels from `transform_features`, predictions from `serving_examples`
    (two classes: a pixel is cell where p(cell) > `threshold`; the Rand score on the mask's
    cell components and, as `watershed_rand_score`, on the cells `regions.cell_regions` grows
    from seeds where p(cell) > `seed_threshold`).

    K >= 3 classes: the mean class Dice, pixel accuracy, each class's Dice and IoU, and the Rand
    score and variation of information of the regions of every class but 0.
    The model is blessed when its membrane Dice (K >= 3 classes: its mean class Dice) is at
    least `min_membrane_dice` and is at most `max_dice_drop` below the last blessed model's (the
    first run has no baseline).
    """
    gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_membrane_dice}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_dice_drop},
        ),
    )
    if num_classes == 2:
        metrics = [
            tfma.MetricConfig(
                class_name=name, module=METRICS_MODULE,
                threshold=gate if name == "MembraneDice" else None,
                config=json.dumps({"threshold": threshold, **(
                    {"seed_threshold": seed_threshold} if name == "WatershedRandScore" else {})}),
            )
            for name in REPORTED_METRICS
        ]
    else:
        metrics = [
            tfma.MetricConfig(class_name="MeanClassDice", module=METRICS_MODULE, threshold=gate,
                              config=json.dumps({"num_classes": num_classes})),
            tfma.MetricConfig(class_name="ClassAccuracy", module=METRICS_MODULE,
                              config=json.dumps({"name": "pixel_accuracy"})),
            *[tfma.MetricConfig(class_name=f"Class{kind.capitalize()}", module=METRICS_MODULE,
                                config=json.dumps({"index": k, "name": f"class_{k}_{kind}"}))
              for kind in ("dice", "iou") for k in range(num_classes)],
            *[tfma.MetricConfig(class_name=name, module=METRICS_MODULE,
                                config=json.dumps({"num_classes": num_classes}))
              for name in ("RandScore", "VariationOfInformation")],
        ]
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                # Said, not guessed: TFMA would first try loading the model as a Keras one.
                model_type=tfma.TF_GENERIC,
                signature_name="serving_examples",
                label_key=F.MASK_XF,
                preprocessing_function_names=["transform_features"],
            )
        ],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )
