"""Code the TFX components load by dotted path: Transform's preprocessing_fn, the anomalies gate
and the Evaluator's configuration."""
