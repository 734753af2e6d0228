"""Bindings to the outside world: the vLLM engine, the logits processor that hosts decoding/
plugins inside it, and model loading/conversion."""
