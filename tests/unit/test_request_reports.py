"""Per-request report tickets: the engine's step figures (as the channel brings them) add up
per ticket, a ticket given back ignores late messages, a step the engine ran twice for one
token counts once, and a report waits for the steps of the tokens it saw."""

import asyncio

import pytest

from adapters.request_reports import SLOTS, ReportBook
from decoding.registry import DEFAULT

#: The built-in registry's figures, flattened as ``<correction>_<figure>``.
FIELDS = [f"{name}_{figure.name}" for name, figure in DEFAULT.figures]


def flat(figures):
    return {f"{c}_{name}": v for c, values in figures.items() for name, v in values.items()}


def row(ticket, uid, position, **figures):
    return [*ticket, uid, position, *(figures.get(name, 0.0) for name in FIELDS)]


def test_figures_accumulate_per_ticket_and_shared_tickets_add_up():
    book = ReportBook(DEFAULT)
    a, b = book.take(), book.take()
    # One step: request a has two choices (uids 1 and 3, n=2), request b one.
    book.record(
        [
            row(a, 1, 0, copilot_steps=1, copilot_abs_sum=0.1, copilot_abs_max=1.0),
            row(b, 2, 0, copilot_steps=1, copilot_abs_sum=0.5, copilot_abs_max=2.0),
            row(a, 3, 0, copilot_steps=1, copilot_abs_sum=0.3, copilot_abs_max=4.0),
        ]
    )
    book.record([row(a, 1, 1, unlearning_tokens_blocked=1, copilot_abs_max=0.5)])
    got = flat(book.read(a))
    assert got["copilot_steps"] == 2 and got["copilot_abs_max"] == 4.0
    assert got["copilot_abs_sum"] == pytest.approx(0.4) and got["unlearning_tokens_blocked"] == 1
    assert (
        flat(book.read(b))["copilot_abs_sum"] == 0.5
        and flat(book.read(b))["unlearning_tokens_blocked"] == 0
    )
    assert (book.steps(a), book.steps(b)) == (3, 1)


def test_a_step_run_again_for_the_same_token_replaces_the_first():
    # vLLM runs logits processors on a prompt's partial prefill too and drops that token; the
    # step that samples the row's token then comes with the same (uid, position).
    book = ReportBook(DEFAULT)
    t = book.take()
    book.record([row(t, 7, 0, copilot_steps=1, copilot_abs_sum=9.0)])
    book.record([row(t, 7, 0, copilot_steps=1, copilot_abs_sum=0.25)])
    assert (
        flat(book.read(t))["copilot_steps"] == 1 and flat(book.read(t))["copilot_abs_sum"] == 0.25
    )


def test_a_given_back_ticket_ignores_late_messages_and_its_slot_is_reused_clean():
    book = ReportBook(DEFAULT)
    old = book.take()
    book.give_back(old)
    late = [row(old, 1, 0, unlearning_steps=9.0)]
    book.record(late)  # the aborted request's last step
    new = book.take()
    assert new[0] == old[0] and new[1] != old[1]
    book.record(late)
    assert flat(book.read(new)) == dict.fromkeys(FIELDS, 0.0) and book.steps(new) == 0
    book.give_back(old)  # a stale give-back leaves the new holder alone
    assert book.take()[0] != new[0]


def test_no_slot_left_means_no_figures():
    book = ReportBook(DEFAULT)
    assert all(book.take() is not None for _ in range(SLOTS))
    assert book.take() is None


def test_a_report_waits_until_the_steps_of_its_tokens_are_in():
    async def run():
        book = ReportBook(DEFAULT)
        t = book.take()
        book.record([row(t, 1, 0, copilot_steps=1)])
        waiting = asyncio.create_task(book.settled(t, tokens=3, timeout=30))
        await asyncio.sleep(0)
        assert not waiting.done()  # 1 of 3 steps in
        book.record([row(t, 1, 1, copilot_steps=1)])
        await asyncio.sleep(0)
        assert not waiting.done()
        book.record([row(t, 1, 2, copilot_steps=1), row([t[0], t[1] + 1], 1, 3)])
        return await asyncio.wait_for(waiting, 5)

    assert flat(asyncio.run(run()))["copilot_steps"] == 3


def test_a_report_whose_steps_never_come_is_built_after_the_bound():
    async def run():
        book = ReportBook(DEFAULT)
        t = book.take()
        book.record([row(t, 1, 0, copilot_steps=1)])
        return await book.settled(t, tokens=2, timeout=0.05)

    assert flat(asyncio.run(run()))["copilot_steps"] == 1
