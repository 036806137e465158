"""Using the pushed model: a TF Serving gRPC client, local SavedModel inference, pictures."""
