"""Per-request report slots: the engine's writes reach the server's reads, and a slot given
back ignores late writes for the request that held it."""

import numpy as np
import pytest

from adapters.request_reports import SLOTS, ReportSlots, ReportWriter


def test_steps_accumulate_per_ticket_and_shared_tickets_add_up(tmp_path):
    slots = ReportSlots(tmp_path / "r.bin")
    writer = ReportWriter(tmp_path / "r.bin")  # as the engine process maps it
    a, b = slots.take(), slots.take()
    writer.record([a, b, a], np.array([0.1, 0.5, 0.3]), np.array([1.0, 2.0, 4.0]))  # n=2: a twice
    writer.record([a], np.array([0.2]), np.array([0.5]))
    assert slots.read(a) == {"steps": 3, "mean_abs": pytest.approx(0.2), "max_abs": 4.0}
    assert slots.read(b) == {"steps": 1, "mean_abs": 0.5, "max_abs": 2.0}


def test_a_given_back_slot_ignores_late_writes_and_is_reused_clean(tmp_path):
    slots = ReportSlots(tmp_path / "r.bin")
    writer = ReportWriter(tmp_path / "r.bin")
    old = slots.take()
    slots.give_back(old)
    writer.record([old], np.array([9.0]), np.array([9.0]))  # the aborted request's last step
    new = slots.take()
    assert new[0] == old[0] and new[1] != old[1]
    writer.record([old], np.array([9.0]), np.array([9.0]))
    assert slots.read(new) == {"steps": 0, "mean_abs": 0.0, "max_abs": 0.0}


def test_no_slot_left_means_no_figures(tmp_path):
    slots = ReportSlots(tmp_path / "r.bin")
    assert all(slots.take() is not None for _ in range(SLOTS))
    assert slots.take() is None


def test_writer_without_a_server_records_nothing(monkeypatch):
    monkeypatch.delenv("_CORRIGO_REQUEST_REPORTS", raising=False)
    ReportWriter().record([[0, 1]], np.array([1.0]), np.array([1.0]))
