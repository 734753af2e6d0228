"""Engine-agnostic correction logic: request specs, the per-step plugin pipeline and plugins.

Nothing in this package imports vLLM; it works on token ids and logits only.
"""
