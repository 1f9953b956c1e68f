"""A run's checkpoint written out as a Hugging Face GPT-2 directory that stands alone.

Besides config.json and model.safetensors, a model trained on GPT-2 text gets GPT-2's tokenizer
files and generation_config.json, so ``AutoTokenizer.from_pretrained`` and ``generate`` need
nothing else; a model trained on a compact vocabulary (bare ids) has no tokenizer to ship.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt2jax.files.atomic import write_atomically
from gpt2jax.inference.weights import restore_checkpoint

EXPORT_MARKER = "gpt2jax_export.json"  # written last into an export, so a later one may replace it


def check_export_target(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuses an ``out_dir`` that is a file, or a non-empty directory that no export wrote (unless ``overwrite``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory to write the Hugging Face model into.")
    if overwrite or not out_dir.is_dir() or (out_dir / EXPORT_MARKER).is_file():
        return
    present = sorted(path.name for path in out_dir.iterdir())
    if present:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise ValueError(
            f"--out {out_dir} already holds files that no export wrote ({shown}); "
            "choose an empty directory, or pass --overwrite to write the model and tokenizer files over them."
        )


def export_checkpoint(
    workdir: str | Path, out_dir: str | Path, step: int | None = None, overwrite: bool = False
) -> dict:
    """Writes a run's checkpoint at ``step`` (the newest intact if None) as a Hugging Face GPT-2 directory."""
    from gpt2jax.interop import hf

    check_export_target(out_dir, overwrite)
    loaded = restore_checkpoint(workdir, step)
    from gpt2jax.inference.sampling import vocabulary_of

    hf.save_hf(loaded.model_config, loaded.params, out_dir)
    text = vocabulary_of(loaded.model_config, loaded.data_meta).text
    tokenizer_files = hf.save_gpt2_tokenizer(loaded.model_config, out_dir) if text else []
    result = {"step": loaded.step, "out": str(out_dir), "tokenizer_files": tokenizer_files}
    marker = dict(result, workdir=str(Path(workdir).absolute()))
    write_atomically(Path(out_dir) / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")
    return result
