"""The TFX pipeline graph and the runners that execute it (LocalDagRunner, Kubeflow)."""
