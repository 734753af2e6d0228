"""The server side of unlearning: what the gate reads, and its configuration."""

from decoding.unlearning.admission import request_texts
from server.config import load_config


def test_the_gate_reads_every_message_part_and_prompt():
    body = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}]},
            {"role": "assistant", "content": None},
            "not a message",
        ]
    }
    assert request_texts(body) == ["sys", "part", "not a message"]
    assert request_texts({"prompt": ["a", "b"]}) == ["a", "b"]


def test_forget_sets_are_configured_by_name(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[forget_sets.capitals]\npath = "facts.jsonl"\n')
    assert load_config(path, environ={}).forget_sets["capitals"].path == "facts.jsonl"
