"""Prompt templates a client may override (p_true, judge, the strategies' prompts).

A template may hold only its own named placeholders, bare: ``{question}``. Format specs
(``{question:>300000000}`` would allocate hundreds of MB), conversions (``{question!r}``),
attribute and index access (``{question.__class__}``), positional fields (``{}``, ``{0}``) are
refused, so filling a checked template (:func:`fill`, or ``str.format`` with string values) only
pastes the values in; text a client supplies inside the values (a question holding braces) is
never read as a template.
"""

from __future__ import annotations

import string

_FORMATTER = string.Formatter()


def check_template(template: str, *fields: str) -> str:
    """``template`` when it uses no placeholder but ``{field}`` for the given ``fields``;
    else ValueError saying what is allowed."""
    allowed = ", ".join("{" + name + "}" for name in fields) or "no placeholders"
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(
            f"the template may use only {allowed} (write {{{{ and }}}} for literal braces; "
            f"problem: {exc})"
        ) from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields or spec or conversion is not None:
            shown = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise ValueError(
                f"the template may use only {allowed}, bare (no format spec, conversion, "
                f"attribute or index); found {shown[:80]}"
            )
    return template


def fill(template: str, **values: str) -> str:
    """A checked template with its placeholders replaced by ``values``, verbatim."""
    out: list[str] = []
    for literal, name, _, _ in _FORMATTER.parse(template):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)
