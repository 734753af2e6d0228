"""Proxy-tuning (Liu et al. 2024): the base's logits shifted by expert minus anti-expert logits
of auxiliary models, every step. The math (``plugin``) and its correction object
(``correction``, the registry's entry)."""

from .correction import CORRECTION
from .plugin import AUX_MODELS_CONTEXT, LogitsSource, ProxyPair, ProxyTuning, ProxyTuningParams

__all__ = [
    "AUX_MODELS_CONTEXT",
    "CORRECTION",
    "LogitsSource",
    "ProxyPair",
    "ProxyTuning",
    "ProxyTuningParams",
]
