"""Per-request report slots: the engine's writes reach the server's reads, and a slot given
back ignores late writes for the request that held it."""

import numpy as np

from adapters.request_reports import FIELDS, SLOTS, ReportSlots, ReportWriter


def test_figures_accumulate_per_ticket_and_shared_tickets_add_up(tmp_path):
    slots = ReportSlots(tmp_path / "r.bin")
    writer = ReportWriter(tmp_path / "r.bin")  # as the engine process maps it
    a, b = slots.take(), slots.take()
    step = {"copilot_steps": np.ones(3), "copilot_abs_sum": np.array([0.1, 0.5, 0.3])}
    writer.record([a, b, a], {**step, "copilot_abs_max": np.array([1.0, 2.0, 4.0])})  # n=2: a twice
    writer.record([a], {"tokens_blocked": np.array([1.0]), "copilot_abs_max": np.array([0.5])})
    got = slots.read(a)
    assert got["copilot_steps"] == 2 and got["copilot_abs_max"] == 4.0
    assert np.isclose(got["copilot_abs_sum"], 0.4) and got["tokens_blocked"] == 1
    assert slots.read(b)["copilot_abs_sum"] == 0.5 and slots.read(b)["tokens_blocked"] == 0


def test_a_given_back_slot_ignores_late_writes_and_is_reused_clean(tmp_path):
    slots = ReportSlots(tmp_path / "r.bin")
    writer = ReportWriter(tmp_path / "r.bin")
    old = slots.take()
    slots.give_back(old)
    late = {"unlearning_steps": np.array([9.0])}
    writer.record([old], late)  # the aborted request's last step
    new = slots.take()
    assert new[0] == old[0] and new[1] != old[1]
    writer.record([old], late)
    assert slots.read(new) == dict.fromkeys(FIELDS[1:], 0.0)


def test_no_slot_left_means_no_figures(tmp_path):
    slots = ReportSlots(tmp_path / "r.bin")
    assert all(slots.take() is not None for _ in range(SLOTS))
    assert slots.take() is None


def test_writer_without_a_server_records_nothing(monkeypatch):
    monkeypatch.delenv("_CORRIGO_REQUEST_REPORTS", raising=False)
    ReportWriter().record([[0, 1]], {"copilot_steps": np.array([1.0])})
