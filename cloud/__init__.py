"""The cloud side: subscriber service, larger models, storage, training."""
