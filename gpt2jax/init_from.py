"""Where a run's or a command's weights come from: ``init_from``, parsed and validated once.

    resume                   the workdir's latest checkpoint, else random weights (training's default)
    scratch                  random weights; refuses a workdir that already holds checkpoints
    hf:DIR                   a Hugging Face GPT-2 directory (config.json + model.safetensors)
    checkpoint:WORKDIR[@STEP] the train state another run saved at STEP (its latest without @STEP)

Training takes all four; evaluation, sampling and export take the last two, a run's
``--workdir [--step N]`` being ``checkpoint:WORKDIR[@N]``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

Kind = Literal["resume", "scratch", "hf", "checkpoint"]
KINDS: tuple[Kind, ...] = ("resume", "scratch", "hf", "checkpoint")
WEIGHT_KINDS: tuple[Kind, ...] = ("hf", "checkpoint")  # the kinds that name weights to read
FORMS = {
    "resume": "resume",
    "scratch": "scratch",
    "hf": "hf:DIR",
    "checkpoint": "checkpoint:WORKDIR[@STEP]",
}


@dataclasses.dataclass(frozen=True)
class InitFrom:
    kind: Kind
    path: Path | None = None  # hf: the directory; checkpoint: the workdir
    step: int | None = None  # checkpoint: the step, None for the latest

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.path}"
        if self.kind == "checkpoint":
            return f"checkpoint:{self.path}" + ("" if self.step is None else f"@{self.step}")
        return self.kind


def parse(text: str, *, option: str = "train.init_from", kinds: tuple[Kind, ...] = KINDS) -> InitFrom:
    """The InitFrom that ``text`` spells; ``option`` names the flag in messages, ``kinds`` what it accepts."""
    expected = ", ".join(FORMS[kind] for kind in kinds)
    head, colon, rest = text.partition(":")
    if not colon and head in ("resume", "scratch"):
        value = InitFrom(head)
    elif colon and head == "hf":
        if not rest:
            raise ValueError(
                f"{option}={text!r} names no directory; write hf:DIR with DIR holding "
                "config.json and model.safetensors."
            )
        value = InitFrom("hf", Path(rest))
    elif colon and head == "checkpoint":
        workdir, at, step = rest.rpartition("@")
        if not at:
            workdir, step = rest, ""
        if not workdir or (at and not step.isdigit()):
            raise ValueError(f"{option}={text!r} must be checkpoint:WORKDIR[@STEP], e.g. checkpoint:runs/trunk@1000.")
        value = InitFrom("checkpoint", Path(workdir), int(step) if step else None)
    else:
        raise ValueError(f"{option}={text!r} is not one of {expected}.")
    if value.kind not in kinds:
        raise ValueError(f"{option}={text!r} does not apply here; give one of {expected}.")
    return value


def weights_source(workdir: str | None, init_from: str | None, step: int | None) -> InitFrom:
    """The weights an inference command reads, from its ``--workdir``, ``--init_from`` and ``--step`` flags."""
    if (workdir is None) == (init_from is None):
        raise ValueError("pass either --workdir (a training run) or --init_from=hf:DIR (Hugging Face weights).")
    if workdir is not None:
        return InitFrom("checkpoint", Path(workdir), step)
    source = parse(init_from, option="--init_from", kinds=WEIGHT_KINDS)
    if step is not None:
        if source.kind == "hf":
            raise ValueError("--step picks a checkpoint of a --workdir; Hugging Face weights have none.")
        if source.step is not None:
            raise ValueError(f"--init_from={init_from!r} already names a step; drop --step={step}.")
        source = dataclasses.replace(source, step=step)
    return source
