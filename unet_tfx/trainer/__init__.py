"""The U-Net itself: model, losses, metrics, tf.data input and the TFX Trainer's run_fn."""
