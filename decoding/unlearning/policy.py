"""What happens when the gate opens: the ``on_match`` policy of a forget set.

- ``steer``: generation runs under the filters (blocked phrases, penalised meanings); what the
  model says instead is left to it (often a confident answer about something else).
- ``abstain``: as ``steer``, but the first time a step's most likely token is blocked the row
  is forced through an operator-configured phrase ("I can't share that.", :mod:`.abstain`),
  then decodes freely under the same filters.
- ``refuse``: no generation; the response carries an operator-configured message with
  ``finish_reason = "content_filter"``.

Strictness is the order of :data:`ON_MATCH`: ``steer < abstain < refuse``. The operator's set
(``[forget_sets.NAME] on_match``) and a profile's correction give floors; a request may only
raise the policy, never lower it (:func:`stricter_or_equal`).
"""

from __future__ import annotations

from typing import Literal, get_args

OnMatch = Literal["steer", "abstain", "refuse"]
#: The policies, least strict first (the order is the strictness).
ON_MATCH: tuple[OnMatch, ...] = get_args(OnMatch)
#: Today's behaviour, and every set's default.
DEFAULT_ON_MATCH: OnMatch = "steer"
#: Defaults of the operator's texts (``[forget_sets.NAME] refusal`` / ``abstention``).
DEFAULT_REFUSAL = "I can't help with that: this service does not discuss it."
DEFAULT_ABSTENTION = "I can't share that."
#: What OpenAI's API calls a response its filters withheld.
CONTENT_FILTER = "content_filter"

#: Per-request outcomes (the ``outcome`` label of corrigo_unlearning_outcomes_total).
Outcome = Literal["refused", "abstained", "steered", "passed"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


def strictness(policy: OnMatch) -> int:
    return ON_MATCH.index(policy)


def stricter_or_equal(policy: OnMatch, floor: OnMatch) -> bool:
    return strictness(policy) >= strictness(floor)


def strictest(*policies: OnMatch | None) -> OnMatch:
    """The strictest of the given policies (:data:`DEFAULT_ON_MATCH` when none is given)."""
    given = [p for p in policies if p is not None]
    return max(given, key=strictness) if given else DEFAULT_ON_MATCH


def outcome(opened: bool, policy: OnMatch, abstentions: int) -> Outcome:
    """A finished request's outcome: ``passed`` when the gate stayed closed; ``refused`` when
    it opened under ``refuse``; ``abstained`` when a row was forced through the abstention
    phrase; ``steered`` when it opened and the filters alone shaped the output (``abstain``
    whose rows never hit a blocked token included)."""
    if not opened:
        return "passed"
    if policy == "refuse":
        return "refused"
    return "abstained" if abstentions > 0 else "steered"
