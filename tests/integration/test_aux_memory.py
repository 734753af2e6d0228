"""A deployment whose auxiliary models cannot fit beside the engine does not start: `corrigo
serve` exits 2 with what they need, what is left and what to change, before any engine starts
(adapters/aux_budget.py)."""

from __future__ import annotations

import subprocess
import sys

from adapters.default_model import ensure_default_model

from ..support import REPO, TEST_ENGINE, make_tiny_llama, write_config


def test_auxiliary_models_that_do_not_fit_stop_the_server_at_start_up(tmp_path):
    tokenizer = ensure_default_model()
    base = make_tiny_llama(tmp_path / "base", tokenizer)
    expert = make_tiny_llama(tmp_path / "expert", tokenizer, seed=1)
    config = write_config(
        tmp_path / "corrigo.toml",
        {
            "model": {"path": str(base)},
            "engine": {**TEST_ENGINE, "max_model_len": 256, "max_num_seqs": 16},
            "aux_models.expert": {"path": str(expert), "dtype": "bfloat16"},
            "aux_memory": {"budget_bytes": 1 << 20},
        },
    )
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert (
        "corrigo: the auxiliary models and copilots do not fit beside the engine: they need "
        "92 MiB on this host at their peak, for engine.max_num_seqs = 16 rows of "
        "engine.max_model_len = 256 tokens, and 1 MiB is left there (aux_memory.budget_bytes)."
    ) in run.stderr
    assert (
        "  aux_models.expert (bfloat16): KV cache 2 MiB, activations 77 MiB, weights 13 MiB\n"
        "Lower engine.max_num_seqs (not one row fits at this engine.max_model_len)"
    ) in run.stderr
    assert "starting vLLM engine" not in run.stderr
