"""Copilot rectification: a small transformer trained on a pilot's mistake log corrects the
pilot's next-token scores each step (Zou et al. 2025, "Transformer Copilot"). One concept per
module: the network (``model``), the fusion rule (``fusion``), the pilot binding (``binding``),
the checkpoint folder (``checkpoint``), the request parameters (``params``), the step plugin
(``plugin``), its runner beside the engine (``runner``) and the registry's entry
(``correction``).

Nothing is imported here, so that the request parameters (``params``) can be read without
loading torch (the CLI's choices).
"""
