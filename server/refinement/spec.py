"""Whether, and how, a request's correction asks for refinement.

The one place the server reads refinement's parameters out of a validated
:class:`~decoding.correction.CorrectionSpec` (the route to decide who serves the request, the
driver to run it), so the spec's shape is known here only.
"""

from __future__ import annotations

from decoding.correction import CorrectionSpec
from decoding.refinement import RefinementParams


def refinement_of(spec: CorrectionSpec | None) -> RefinementParams | None:
    """The refinement ``spec`` asks for, or None."""
    if spec is None:
        return None
    return spec.plugins.get("refinement")
