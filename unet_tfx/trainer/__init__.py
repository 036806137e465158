"""The U-Net itself: model, losses, metrics, tf.data input and the TFX Trainer's run_fn."""

from unet_tfx.trainer.autograph import leave_tf_keras_unconverted

leave_tf_keras_unconverted()  # before anything here traces Keras code
