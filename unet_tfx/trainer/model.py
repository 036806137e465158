"""The classic U-Net builder (Ronneberger et al. 2015, as in the seed)."""

import logging

import tf_keras as keras

from unet_tfx.config import TrainingConfig
from unet_tfx.trainer.distribution import resolve_jit_compile
from unet_tfx.trainer.losses import LOSSES, dice_coef, multiclass_dice_loss
from unet_tfx.trainer.metrics import ClassAccuracy, MeanClassDice, MembraneDice, PixelAccuracy


def _double_conv(x, filters: int, name: str, batch_norm: bool):
    """Two 3x3 ReLU convs; with `batch_norm`, each conv (then without bias) is normalized before
    its ReLU."""
    for i in (1, 2):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation=None if batch_norm else "relu",
            use_bias=not batch_norm, kernel_initializer="he_normal", name=f"{name}_conv{i}",
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_norm{i}")(x)
            x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    input_shape: tuple = (None, None, 1), base_filters: int = 32, depth: int = 4,
    num_classes: int = 2, batch_norm: bool = False,
) -> keras.Model:
    """Two 3x3 ReLU convs per level, filters doubling from `base_filters` over `depth` poolings.

    Down: 2x2 max-pooling. Up: 2x2 stride-2 Conv2DTranspose concatenated with the skip. Output:
    a 1x1 sigmoid map (p of class 1), or for `num_classes` K >= 3 a 1x1 softmax over K
    channels. Fully convolutional: H and W must be divisible by 2**depth. `batch_norm` adds
    batch normalization after every 3x3 conv (not in the classic U-Net).

    Layers compute in the global mixed-precision policy's dtype (see `precision.py`), except the
    output layer: `probabilities` always computes and returns float32.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _double_conv(x, base_filters * 2**level, f"down{level}", batch_norm)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _double_conv(x, base_filters * 2**depth, "bottom", batch_norm)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                         name=f"up{level}_transpose")(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _double_conv(x, filters, f"up{level}", batch_norm)
    outputs = keras.layers.Conv2D(
        1 if num_classes == 2 else num_classes, 1,
        activation="sigmoid" if num_classes == 2 else "softmax", dtype="float32",
        name="probabilities")(x)
    return keras.Model(inputs, outputs, name="unet")


def compile_unet(model: keras.Model, loss: str = TrainingConfig.loss,
                 learning_rate: float = TrainingConfig.learning_rate,
                 ema_momentum: float | None = None, jit_compile: bool | str = False,
                 decay_steps: int | None = None):
    """Compile with Adam and one of `LOSSES`; report Dice, membrane Dice and pixel accuracy.

    With `ema_momentum`, fit() ends by replacing the weights with their moving average. A model
    built under the mixed_float16 policy gets a LossScaleOptimizer around Adam (dynamic loss
    scaling); it steps the inner Adam, so its weight average, only on finite gradients.
    The losses and metrics cast to float32 before they compute. `jit_compile` compiles the
    train and eval steps with XLA: a bool, or one of "auto" (on with a GPU), "on", "off".
    With `decay_steps`, the learning rate falls from `learning_rate` to 0 along a half cosine
    over that many steps; without, it stays constant.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: expected one of {sorted(LOSSES)}")
    num_classes = model.output_shape[-1]
    if num_classes > 1:  # K classes: the mean soft Dice over classes, hard Dice per class
        loss_fn, metrics = multiclass_dice_loss, [
            MeanClassDice(num_classes, name="mean_class_dice"),
            ClassAccuracy(name="pixel_accuracy")]
    else:
        loss_fn, metrics = LOSSES[loss], [dice_coef, MembraneDice(name="membrane_dice"),
                                          PixelAccuracy(name="pixel_accuracy")]
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if decay_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, **ema)
    if model.dtype_policy.name == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    if isinstance(jit_compile, str):
        jit_compile, reason = resolve_jit_compile(jit_compile)
        logging.getLogger("unet_tfx.trainer").info("XLA: %s (%s)", "on" if jit_compile else "off",
                                                   reason)
    model.compile(
        optimizer=optimizer,
        loss=loss_fn,
        metrics=metrics,
        jit_compile=jit_compile,
    )
    return model


def build_from_config(cfg: TrainingConfig, channels: int = 1, num_classes: int = 2) -> keras.Model:
    """The U-Net `cfg` describes (filters, depth, batch norm), for images of any size."""
    return build_unet((None, None, channels), cfg.base_filters, cfg.depth, num_classes,
                      cfg.batch_norm)


def compile_from_config(model: keras.Model, cfg: TrainingConfig, steps: int | None = None):
    """`compile_unet` with `cfg`'s loss, rate, weight average and XLA setting; under the cosine
    schedule the rate decays over `steps` (constant without)."""
    return compile_unet(model, loss=cfg.loss, learning_rate=cfg.learning_rate,
                        ema_momentum=cfg.ema_momentum, jit_compile=cfg.jit_compile,
                        decay_steps=steps if cfg.learning_rate_schedule == "cosine" else None)
