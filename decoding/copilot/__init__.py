"""Copilot rectification: a small transformer trained on a pilot's mistake log corrects the
pilot's next-token scores each step (Zou et al. 2025, "Transformer Copilot"). One concept per module: the network
(``model``), the fusion rule (``fusion``), the pilot binding (``binding``), the checkpoint
folder (``checkpoint``), the request parameters (``params``) and the step plugin (``plugin``).
"""

from .binding import Binding, BindingError
from .correction import CORRECTION
from .fusion import SPACES, RectificationFusion
from .params import COPILOTS_CONTEXT, CopilotParams
from .plugin import CopilotRectification

__all__ = [
    "CORRECTION",
    "COPILOTS_CONTEXT",
    "SPACES",
    "Binding",
    "BindingError",
    "CopilotParams",
    "CopilotRectification",
    "RectificationFusion",
]
