"""The server side of unlearning: what the gate reads, and the engine -> server count board."""

from adapters.unlearning_report import SLOTS, ReportBoard, ReportWriter
from server.config import load_config
from server.unlearning import request_texts


def test_the_gate_reads_every_message_part_and_prompt():
    body = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image"}]},
            {"role": "assistant", "content": None},
            "not a message",
        ]
    }
    assert request_texts(body) == ["sys", "part"]
    assert request_texts({"prompt": ["a", [1, 2], "b"]}) == ["a", "b"]
    assert request_texts({"prompt": [1, 2, 3]}) == []


def test_counts_cross_from_the_engine_writer_to_the_server_board(tmp_path):
    board = ReportBoard(tmp_path / "reports.bin")
    writer = ReportWriter(tmp_path / "reports.bin")  # in the engine, another process
    slot = board.acquire()
    writer.add(slot, 1, 1, 0)
    writer.add(slot, 1, 0, 1)
    writer.add(SLOTS + 5, 1, 1, 1)  # out of range: ignored, never a crash in the engine
    assert board.release(slot) == {"steps": 2, "tokens_blocked": 1, "tokens_penalized": 1}
    again = board.acquire()
    assert again == slot and board.release(again)["steps"] == 0  # zeroed on reuse


def test_forget_sets_are_configured_by_name(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[forget_sets.capitals]\npath = "facts.jsonl"\n')
    assert load_config(path, environ={}).forget_sets["capitals"].path == "facts.jsonl"
