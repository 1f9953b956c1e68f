"""The wall time a sweep takes on a device, for ``sweep --plan --device``.

Each program (a shape and a batch: schedules, rates and seeds are its inputs, so its points share one
compile) trains its points' FLOPs (PaLM's count, as the loop's MFU counts them) at the device's peak
times an MFU, then spends seconds outside its train steps: one compile, and each point's evaluations,
checkpoints and records. The MFU and those seconds are the ones a previous session of the sweep measured
for that program on that device (its sessions.jsonl, written by ``sweep.Sweep.run``), else assumptions
the estimate names.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from gpt2jax import flops
from gpt2jax.files.workdir import SESSIONS_FILE, read_jsonl
from gpt2jax.scaling.plan import SweepPlan
from gpt2jax.scaling.sweep import duration, program_name

# What a sweep spends outside the steps of a point, where no session measured it. A program compiles a train
# step and three small ones (init, eval, certify): bench/gpu.py's estimate, from its H200 record, takes an
# unrolled GPT-2 small step at 14.4 s and a small one at 4 s, 26.4 s in all (a sweep's shapes are smaller).
ASSUMED_COMPILE_S = 26.4
# Evaluations, checkpoints and records of a point after the first of its program: 2 to 6 s on 2 loaded CPU
# cores for the tuning test's 1-layer sweep (docs/scaling.md), mostly host work a GPU does not speed up.
ASSUMED_POINT_S = 5.0


def measurements(workdirs: list[Path], device: str) -> dict[str, dict]:
    """{program: {"mfu", "compile_s", "point_s"}} as sessions on ``device`` in ``workdirs`` measured them.

    ``mfu``: the median of its points'; ``point_s``: the median seconds outside steps of its points after the
    first of a session; ``compile_s``: what the first of a session spent outside steps beyond that.
    """
    entries: dict[str, list[tuple[bool, dict]]] = {}
    for workdir in workdirs:
        for session in read_jsonl(Path(workdir) / SESSIONS_FILE):
            if session.get("device") != device:
                continue
            seen = set()
            for entry in session.get("points", []):
                entries.setdefault(entry["program"], []).append((entry["program"] not in seen, entry))
                seen.add(entry["program"])
    measured = {}
    for program, found in entries.items():
        mfus = [entry["mfu"] for _, entry in found if entry.get("mfu")]
        firsts = [entry["outside_steps_s"] for first, entry in found if first]
        later = [entry["outside_steps_s"] for first, entry in found if not first]
        item = {"mfu": statistics.median(mfus)} if mfus else {}
        if later:
            item["point_s"] = statistics.median(later)
            item["compile_s"] = max(0.0, statistics.median(firsts) - item["point_s"])
        measured[program] = item
    return measured


def estimate(
    plans: list[SweepPlan],
    device: str,
    measured: dict[str, dict],
    mfu: float,
    compile_s: float = ASSUMED_COMPILE_S,
    point_s: float = ASSUMED_POINT_S,
) -> dict:
    """The wall time of ``plans`` (a tuning scan, then the sweep) on one ``device``, program by program.

    ``mfu``, ``compile_s`` and ``point_s`` are the assumptions for a program ``measured`` has no figure of.
    """
    dtype = plans[0].config.base.model.dtype
    peak = flops.DEVICE_PEAKS[device][flops.compute_precision(dtype)]
    programs: dict[str, dict] = {}
    for plan in plans:
        for point in plan.points:
            program = programs.setdefault(program_name(point), {"points": 0, "flops": 0.0})
            program["points"] += 1
            program["flops"] += plan.spent_flops(point, "6n_attention")
    for name, program in programs.items():
        found = measured.get(name, {})
        program["mfu_measured"] = "mfu" in found
        program["mfu"] = found.get("mfu", mfu)
        program["outside_measured"] = "point_s" in found
        program["compile_s"] = found.get("compile_s", compile_s)
        program["point_s"] = found.get("point_s", point_s)
        program["in_steps_s"] = program["flops"] / (peak * program["mfu"])
        program["outside_steps_s"] = program["compile_s"] + program["points"] * program["point_s"]
    in_steps = sum(program["in_steps_s"] for program in programs.values())
    outside = sum(program["outside_steps_s"] for program in programs.values())
    return {
        "device": device,
        "precision": flops.compute_precision(dtype),
        "peak": peak,
        "programs": programs,
        "in_steps_s": in_steps,
        "outside_steps_s": outside,
        "wall_s": in_steps + outside,
        "assumed": {"mfu": mfu, "compile_s": compile_s, "point_s": point_s},
    }


def format_estimate(found: dict) -> str:
    """The estimate as the plan prints it: the total, then each program's share and where its figures came from."""
    assumed = found["assumed"]
    lines = [
        f"wall time on one {found['device']} ({found['precision']} peak {found['peak']:.3g} FLOP/s): about "
        f"{duration(found['wall_s'])}, {duration(found['in_steps_s'])} in train steps and "
        f"{duration(found['outside_steps_s'])} outside them ({found['outside_steps_s'] / found['wall_s']:.0%})",
        f"  {'program':<16}{'points':>7}{'FLOPs':>10}{'MFU':>7}{'':<10}{'in steps':>10}{'compile':>9}{'per point':>10}",
    ]
    for name, program in found["programs"].items():
        source = "measured" if program["mfu_measured"] else "assumed"
        outside = "measured" if program["outside_measured"] else "assumed"
        lines.append(
            f"  {name:<16}{program['points']:>7}{program['flops']:>10.3g}{100 * program['mfu']:>6.3g}% {source:<9}"
            f"{duration(program['in_steps_s']):>10}{program['compile_s']:>8.0f}s{program['point_s']:>9.1f}s {outside}"
        )
    lines.append(
        f"  assumed where no session on {found['device']} measured them: MFU {100 * assumed['mfu']:.3g}%, "
        f"{assumed['compile_s']:g} s to compile a program, {assumed['point_s']:g} s a point outside its steps"
    )
    return "\n".join(lines)
