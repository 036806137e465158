"""The seed U-Net, its losses and metrics, on small configurations."""

import dataclasses
import types

import numpy as np
import pytest
import tensorflow as tf
from skimage.measure import label
from skimage.metrics import adapted_rand_error

from unet_tfx.config import TrainingConfig
from unet_tfx.regions import cell_regions, class_regions
from unet_tfx.trainer.losses import (
    LOSSES,
    dice_coef,
    dice_loss,
    two_class_dice_bce_loss,
    two_class_dice_loss,
)
from unet_tfx.trainer.metrics import (
    CellDice,
    CellIou,
    MeanDice,
    MembraneDice,
    MembraneIou,
    PixelAccuracy,
    RandScore,
    VariationOfInformation,
    WatershedRandScore,
)
from unet_tfx.trainer.model import build_from_config, build_unet, compile_from_config, compile_unet
from unet_tfx.trainer.plan import keep_served_model, warm_start, write_training_record


def test_seed_configuration_has_the_seed_parameter_count():
    assert build_unet((256, 256, 1)).count_params() == 7_759_521


def test_output_is_a_probability_map_of_the_input_size():
    model = build_unet((64, 64, 1), base_filters=4)
    out = model(tf.random.normal([2, 64, 64, 1])).numpy()
    assert out.shape == (2, 64, 64, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_fully_convolutional_on_512():
    model = build_unet((None, None, 1), base_filters=2)
    assert model(tf.zeros([1, 512, 512, 1])).shape == (1, 512, 512, 1)
    assert model(tf.zeros([1, 96, 160, 1])).shape == (1, 96, 160, 1)


def test_depth_and_base_filters_are_parameters():
    small = build_unet((32, 32, 1), base_filters=4, depth=2)
    assert small.get_layer("bottom_conv2").filters == 16
    assert small(tf.zeros([1, 32, 32, 1])).shape == (1, 32, 32, 1)


def test_batch_norm_normalizes_every_conv_and_predicts_each_image_as_if_alone():
    classic, normed = (build_unet((32, 32, 1), base_filters=2, depth=2, batch_norm=flag)
                       for flag in (False, True))
    convs = [layer for layer in normed.layers if layer.name.endswith(("_conv1", "_conv2"))]
    batch_norm = tf.keras.layers.BatchNormalization
    norms = [layer for layer in normed.layers if isinstance(layer, batch_norm)]
    assert len(norms) == len(convs) == 10 and not any(conv.use_bias for conv in convs)
    assert not any(isinstance(layer, batch_norm) for layer in classic.layers)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
    compile_unet(normed).fit(x, (x > 0).astype("float32"), batch_size=2, epochs=2, verbose=0)
    moving_mean = normed.get_layer("down0_norm1").moving_mean.numpy()
    assert np.abs(moving_mean).max() > 0  # training moved the statistics inference uses
    alone, batched = normed(x[:1]).numpy(), normed(x).numpy()[:1]
    np.testing.assert_allclose(alone, batched, atol=1e-5)  # serving: no batch statistics
    assert np.abs(normed(x[:1], training=True).numpy() - alone).max() > 1e-3


def _masks():
    rng = np.random.default_rng(0)
    a = (rng.random((2, 32, 32, 1)) > 0.5).astype("float32")
    return a, 1.0 - a


def test_dice_is_one_for_equal_masks_and_near_zero_for_disjoint():
    a, b = _masks()
    assert float(dice_coef(a, a)) == pytest.approx(1.0)
    assert float(dice_coef(a, b)) < 1e-3
    assert float(dice_loss(a, a)) == pytest.approx(0.0, abs=1e-6)


def test_dice_is_symmetric():
    rng = np.random.default_rng(1)
    a = rng.random((1, 16, 16, 1)).astype("float32")
    b = (rng.random((1, 16, 16, 1)) > 0.3).astype("float32")
    assert float(dice_coef(a, b)) == pytest.approx(float(dice_coef(b, a)))


def test_two_class_loss_punishes_the_trivial_all_cell_answer():
    truth = np.ones((1, 32, 32, 1), "float32")
    truth[:, ::4] = 0.0  # 25% membrane
    all_cell = np.ones_like(truth)
    assert float(dice_loss(truth, all_cell)) < 0.15  # the seed's loss barely sees the error
    assert float(two_class_dice_loss(truth, all_cell)) > 0.45
    assert float(two_class_dice_loss(truth, truth)) == pytest.approx(0.0, abs=1e-6)


def test_the_cross_entropy_loss_adds_the_pixels_mean_cross_entropy_to_the_two_class_loss():
    truth = np.array([[[[1.0], [0.0]]]], "float32")
    pred = np.array([[[[0.8], [0.2]]]], "float32")  # each pixel: -ln 0.8
    expected = float(two_class_dice_loss(truth, pred)) - np.log(0.8)
    assert float(two_class_dice_bce_loss(truth, pred)) == pytest.approx(expected, rel=1e-5)
    assert float(two_class_dice_bce_loss(truth, truth)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss", ["dice", "dice2", "dice2_bce"])
def test_gradients_are_non_zero(loss):
    model = compile_unet(build_unet((32, 32, 1), base_filters=4), loss=loss)
    x = tf.random.normal([2, 32, 32, 1])
    y = tf.cast(tf.random.uniform([2, 32, 32, 1]) > 0.5, tf.float32)
    with tf.GradientTape() as tape:
        value = model.loss(y, model(x, training=True))
    grads = tape.gradient(value, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_compile_unet_defaults_to_the_trainers_loss_and_rate():
    model = compile_unet(build_unet((32, 32, 1), base_filters=2))
    assert model.loss is LOSSES[TrainingConfig.loss] is two_class_dice_bce_loss
    assert float(model.optimizer.learning_rate) == pytest.approx(TrainingConfig.learning_rate)


def test_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="dice2"):
        compile_unet(build_unet((32, 32, 1), base_filters=2), loss="bce")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_a_few_steps_lower_the_loss_on_a_synthetic_problem(batch_norm):
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 1)).astype("float32")
    y = (x > 0.3).astype("float32")  # a pixel-wise rule the net can learn fast
    model = compile_unet(build_unet((32, 32, 1), base_filters=4, batch_norm=batch_norm),
                         loss="dice2")
    before = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, batch_size=4, epochs=40, verbose=0)
    after = model.evaluate(x, y, verbose=0)[0]
    assert after < before - 0.1


def test_class_metrics_on_known_predictions():
    truth = np.array([[1, 1, 0, 0]], "float32")
    pred = np.array([[0.9, 0.2, 0.1, 0.8]], "float32")  # → [1, 0, 0, 1]
    cell, membrane, mean, accuracy = CellDice(), MembraneDice(), MeanDice(), PixelAccuracy()
    for metric in (cell, membrane, mean, accuracy):
        metric.update_state(truth, pred)
    assert float(cell.result()) == pytest.approx(0.5)  # 2*1 / (2 + 2)
    assert float(membrane.result()) == pytest.approx(0.5)
    assert float(mean.result()) == pytest.approx(0.5)
    assert float(accuracy.result()) == pytest.approx(0.5)


def test_metrics_accumulate_over_batches_and_reset():
    metric = MembraneDice()
    metric.update_state(np.zeros((1, 4)), np.zeros((1, 4)))  # 4 membrane pixels, all right
    metric.update_state(np.ones((1, 4)), np.zeros((1, 4)))  # 4 false membrane pixels
    assert float(metric.result()) == pytest.approx(2 * 4 / (4 + 8))
    metric.reset_state()
    assert float(metric.result()) == 0.0
    mean = MeanDice()
    mean.update_state(np.ones((1, 4)), np.ones((1, 4)))
    assert float(mean.result()) == pytest.approx(0.5)  # cell Dice 1, no membrane at all: 0
    mean.reset_state()
    assert float(mean.result()) == 0.0


def test_ema_is_opt_in_and_keeps_adam_at_the_seed_rate():
    plain = compile_unet(build_unet((32, 32, 1), base_filters=2))
    averaged = compile_unet(build_unet((32, 32, 1), base_filters=2), ema_momentum=0.9)
    assert not plain.optimizer.use_ema
    assert averaged.optimizer.use_ema and averaged.optimizer.ema_momentum == 0.9
    assert float(averaged.optimizer.learning_rate) == pytest.approx(1e-3)


def test_cosine_decay_takes_the_rate_from_the_seed_rate_towards_zero():
    model = compile_unet(build_unet((16, 16, 1), base_filters=2), decay_steps=4)
    x = np.random.default_rng(0).random((2, 16, 16, 1), "float32")
    applied = []  # the optimizer's rate reads as the one its last step applied
    for _ in range(4):
        model.train_on_batch(x, (x > 0.5).astype("float32"))
        applied.append(float(model.optimizer.learning_rate))
    assert applied == pytest.approx([1e-3 * (1 + np.cos(np.pi * step / 4)) / 2
                                     for step in range(4)], abs=1e-9)


def test_the_config_builds_and_compiles_the_model_the_trainer_trains():
    cfg = TrainingConfig(base_filters=2, depth=2, loss="dice", learning_rate=2e-3,
                         ema_momentum=None, jit_compile="off")
    model = build_from_config(cfg, channels=3, num_classes=2)
    assert model.input_shape == (None, None, None, 3)
    assert model.get_layer("bottom_conv2").filters == 8 and model.get_layer("down0_norm1")
    compile_from_config(model, cfg, steps=10)
    assert model.loss.__name__ == "dice_loss" and not model.optimizer.use_ema
    schedule = model.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    assert schedule["config"]["decay_steps"] == 10
    assert schedule["config"]["initial_learning_rate"] == pytest.approx(2e-3)
    constant = dataclasses.replace(cfg, learning_rate_schedule="constant", batch_norm=False)
    classic = compile_from_config(build_from_config(constant, num_classes=3), constant, steps=10)
    assert classic.output_shape == (None, None, None, 3)
    assert float(classic.optimizer.learning_rate) == pytest.approx(2e-3)


def test_iou_on_known_predictions():
    truth = np.array([[1, 1, 0, 0]], "float32")
    pred = np.array([[0.9, 0.2, 0.1, 0.8]], "float32")  # → [1, 0, 0, 1]
    cell, membrane = CellIou(), MembraneIou()
    for metric in (cell, membrane):
        metric.update_state(truth, pred)
    assert float(cell.result()) == pytest.approx(1 / 3)  # 1 / (2 + 2 - 1)
    assert float(membrane.result()) == pytest.approx(1 / 3)


def _cells_with_a_membrane(gap: bool) -> np.ndarray:
    """[1, 32, 32, 1]: cell (1) left and right of a vertical membrane (0), cut by a gap."""
    mask = np.ones((32, 32), "float32")
    mask[:, 15:17] = 0
    if gap:
        mask[10:14, 15:17] = 1
    return mask[None, ..., None]


def test_region_metrics_see_the_gap_that_merges_two_cells():
    truth = _cells_with_a_membrane(gap=False)
    perfect, gapped = RandScore(), RandScore()
    perfect.update_state(truth, truth)
    gapped.update_state(truth, _cells_with_a_membrane(gap=True))
    assert float(perfect.result()) == pytest.approx(1.0)
    # Two cells predicted as one: skimage's adapted Rand error, on the same regions.
    expected = 1 - adapted_rand_error(label(truth[0, ..., 0] > 0.5, connectivity=1),
                                      np.where(_cells_with_a_membrane(True)[0, ..., 0] > 0.5,
                                               1, 0))[0]
    assert float(gapped.result()) == pytest.approx(expected, abs=1e-6)
    assert 0.4 < expected < 0.9
    # Pixel Dice barely moves (8 of 1,024 pixels): the region measure is what sees the merge.
    dice = MembraneDice()
    dice.update_state(truth, _cells_with_a_membrane(gap=True))
    assert float(dice.result()) > 0.85
    vi = VariationOfInformation()
    vi.update_state(truth, truth)
    assert float(vi.result()) == pytest.approx(0.0, abs=1e-9)
    vi.update_state(truth, _cells_with_a_membrane(gap=True))
    assert float(vi.result()) > 0.3  # mean of 0 and the merge's ~ln 2 (0.69) in nats


def test_watershed_cells_divide_along_a_weak_membrane_the_mask_lets_through():
    truth = _cells_with_a_membrane(gap=False)
    # A model's map: sure of both cells, unsure in the membrane's gap (p 0.6 > 0.5: the mask
    # joins the cells there); the membrane itself is wider than the truth's.
    p_cell = np.full((32, 32), 0.99, "float32")
    p_cell[:, 14:18] = 0.1
    p_cell[10:14, 14:18] = 0.6
    pred = p_cell[None, ..., None]
    regions = cell_regions(p_cell)
    assert len(np.unique(regions)) == 2 and (regions > 0).all()  # two cells tile the image
    assert (regions[:, :15] == regions[0, 0]).all() and (regions[:, 17:] == regions[0, -1]).all()
    components, grown = RandScore(), WatershedRandScore()
    components.update_state(truth, pred)
    grown.update_state(truth, pred[..., 0])  # TFMA's squeezed [N, H, W]
    assert float(components.result()) < 0.7  # the gap merged the cells
    assert float(grown.result()) == pytest.approx(1.0)
    # No pixel sure enough to seed a cell: no cells, score 0 (as RandScore without regions).
    unsure = WatershedRandScore.from_config(WatershedRandScore(seed_threshold=0.995).get_config())
    unsure.update_state(truth, pred)
    assert float(unsure.result()) == 0.0


def test_region_metric_states_add_up_across_batches_as_tfma_merges_them():
    truth = np.concatenate([_cells_with_a_membrane(False)] * 2)
    pred = np.concatenate([_cells_with_a_membrane(False), _cells_with_a_membrane(True)])
    whole, first, second = RandScore(), RandScore(), RandScore()
    whole.update_state(truth, pred)
    first.update_state(truth[:1], pred[:1])
    second.update_state(truth[1:], pred[1:])
    merged = RandScore()
    weights = zip(first.get_weights(), second.get_weights(), strict=True)
    merged.set_weights([a + b for a, b in weights])
    assert float(merged.result()) == pytest.approx(float(whole.result()))
    squeezed = RandScore()  # TFMA squeezes the channel away: [N, H, W]
    squeezed.update_state(truth[..., 0], pred[..., 0])
    assert float(squeezed.result()) == pytest.approx(float(whole.result()))


def test_rand_score_of_a_prediction_without_cells_is_zero_and_images_without_cells_are_skipped():
    truth = _cells_with_a_membrane(gap=False)
    metric = RandScore()
    metric.update_state(truth, np.zeros_like(truth))
    assert float(metric.result()) == 0.0
    metric.update_state(np.zeros_like(truth), truth)  # no cells in the labels: no score
    metric.update_state(truth, truth)
    assert float(metric.result()) == pytest.approx(0.5)  # mean of 0 and 1


def test_k_class_regions_are_each_class_components_and_a_merge_costs_rand_and_vi():
    classes = np.zeros((8, 12), np.int64)  # class 0 is the boundary
    classes[1:7, 1:5] = 1
    classes[1:7, 6:9] = 1  # a second class-1 region, across a boundary column
    classes[1:7, 9:11] = 2  # touches the second one: another class, another region
    regions = class_regions(classes)
    assert len(np.unique(regions[classes > 0])) == 3 and (regions[classes == 0] == 0).all()
    merged = classes.copy()
    merged[3, 5] = 1  # a gap in the boundary joins the two class-1 regions
    one_hot = np.eye(3, dtype=np.float32)
    truth, pred = one_hot[classes][None], one_hot[merged][None]  # [1, H, W, 3]
    rand, vi = RandScore(num_classes=3), VariationOfInformation(num_classes=3)
    rand.update_state(truth, truth)
    vi.update_state(truth, truth)
    assert (float(rand.result()), float(vi.result())) == pytest.approx((1.0, 0.0), abs=1e-6)
    rand.reset_state()
    rand.update_state(truth, pred)
    expected = 1 - adapted_rand_error(class_regions(classes), class_regions(merged))[0]
    assert float(rand.result()) == pytest.approx(expected, abs=1e-6) and expected < 0.9
    # Two-class masks given as one-hot class indices score as the thresholded sigmoid does.
    cells = _cells_with_a_membrane(gap=True)
    two = RandScore(num_classes=3)
    two.update_state(one_hot[_cells_with_a_membrane(False)[..., 0].astype(int)],
                     one_hot[cells[..., 0].astype(int)])
    sigmoid = RandScore()
    sigmoid.update_state(_cells_with_a_membrane(False), cells)
    assert float(two.result()) == pytest.approx(float(sigmoid.result()))


def test_k_class_model_loss_and_metrics():
    from unet_tfx.trainer.losses import multiclass_dice_loss
    from unet_tfx.trainer.metrics import ClassAccuracy, ClassDice, ClassIou, MeanClassDice

    model = build_unet((32, 32, 1), base_filters=4, num_classes=3)
    probabilities = model(np.random.default_rng(0).normal(size=(1, 32, 32, 1)))
    assert probabilities.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(tf.reduce_sum(probabilities, -1), 1.0, atol=1e-5)
    # For two classes the mean-over-classes loss is the two-class Dice loss.
    p = tf.constant([[0.9, 0.2, 0.1, 0.8]])
    truth = tf.constant([[1.0, 1.0, 0.0, 0.0]])
    assert float(multiclass_dice_loss(tf.stack([1 - truth, truth], -1),
                                      tf.stack([1 - p, p], -1))) == pytest.approx(
        float(two_class_dice_loss(truth, p)))
    labels = np.eye(3, dtype=np.float32)[[[0, 1, 2, 2]]]  # [1, 4, 3]
    predicted = np.eye(3, dtype=np.float32)[[[0, 1, 1, 2]]]
    dice, iou = [ClassDice(k) for k in range(3)], [ClassIou(k) for k in range(3)]
    mean, accuracy = MeanClassDice(3), ClassAccuracy()
    for metric in (*dice, *iou, mean, accuracy):
        metric.update_state(labels, predicted)
    assert [float(d.result()) for d in dice] == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert [float(m.result()) for m in iou] == pytest.approx([1.0, 1 / 2, 1 / 2])
    assert [m.name for m in iou] == ["class_0_iou", "class_1_iou", "class_2_iou"]
    assert float(mean.result()) == pytest.approx((1 + 4 / 3) / 3)
    assert float(accuracy.result()) == pytest.approx(0.75)


def test_a_warm_start_that_fails_half_way_leaves_the_fresh_weights(tmp_path):
    """A served two-class model cannot warm-start a three-class one: the load fails at the output
    layer, after the convolutions before it were restored; the model must be all fresh again."""
    served = build_unet((None, None, 1), base_filters=4, depth=2)
    served.save(str(tmp_path / "1"), save_format="tf", include_optimizer=False,
                save_traces=False)
    model = build_unet((None, None, 1), base_filters=4, depth=2, num_classes=3)
    fresh = model.get_weights()
    fn_args = types.SimpleNamespace(base_model=str(tmp_path / "1"))
    assert warm_start(model, fn_args, {"warm_start": True, "served_version": 1}) is None
    for now, before in zip(model.get_weights(), fresh, strict=True):
        np.testing.assert_array_equal(now, before)
    same_shape = build_unet((None, None, 1), base_filters=4, depth=2)
    assert warm_start(same_shape, fn_args, {"warm_start": True, "served_version": 1}) == 1
    np.testing.assert_array_equal(same_shape.get_weights()[0], served.get_weights()[0])


def test_keeping_the_served_model_warns_of_settings_it_does_not_follow(tmp_path, caplog):
    """Same data, nothing trained: a new --mask-threshold would silently not reach the served
    masks, so the Trainer says which settings differ and that --force applies them."""
    served = tmp_path / "served"
    build_unet((None, None, 1), base_filters=4, depth=2).save(
        str(served), save_format="tf", include_optimizer=False, save_traces=False)
    settings = dataclasses.asdict(TrainingConfig())
    write_training_record(str(served), {"spans": [0]}, None, settings)
    fn_args = types.SimpleNamespace(
        base_model=str(served), serving_model_dir=str(tmp_path / "export"),
        custom_config={"training": {**settings, "mask_threshold": 0.4}})
    plan = {"train": False, "reason": "spans [0] are what version 1 was trained on"}
    assert keep_served_model(fn_args, plan)
    assert (tmp_path / "export" / "saved_model.pb").exists()
    assert "(mask_threshold 0.5 -> 0.4): pass --force" in caplog.text
    caplog.clear()
    fn_args.custom_config["training"] = settings
    fn_args.serving_model_dir = str(tmp_path / "export-2")
    assert keep_served_model(fn_args, plan)
    assert "--force" not in caplog.text
