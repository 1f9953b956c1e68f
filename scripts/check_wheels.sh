#!/usr/bin/env bash
# Does gpt2jax import on the GPU machines' image with .whl/'s wheels, and in under 10 s?
#
#   bash scripts/check_wheels.sh [VENV]      (default /tmp/gpt2jax-image-venv; about 1 GB, minutes)
#
# The closest this machine (Python 3.11, no 3.12) comes to the image: a fresh venv holding only
# gpt2jax's dependencies that bench/gpu_image_packages.txt lists (pip resolves their own; any that
# the image does not list is named), then the wheels of bench/wheels.txt built for 3.11
# (scripts/fetch_wheels.sh), then `bench/gpu.py --check_imports`: the harness's imports and TFDS's,
# timed, and every distribution they loaded checked against the image's list and the wheels.
# What it cannot show: the image's own versions (jax 0.11.2 there) and Python 3.12's wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/gpt2jax-image-venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# gpt2jax's dependencies that the image holds: pyproject's, less those that travel as wheels.
image_held=$(python3 - <<'PY'
import re, tomllib
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
name = lambda requirement: normal(re.split(r"[\s=<>!~;\[]", requirement.strip())[0])
listed = lambda path: {name(line) for line in open(path) if line.strip() and not line.startswith("#")}
image, wheels = listed("bench/gpu_image_packages.txt"), listed("bench/wheels.txt")
needed = {name(dep) for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]}
missing = needed - image - wheels
if missing:
    raise SystemExit(f"error: gpt2jax needs {', '.join(sorted(missing))}, which neither the image nor bench/wheels.txt holds.")
print(" ".join(sorted(needed & image)))
PY
)
rm -rf "$venv"
python3 -m venv "$venv"
echo "installing the image's packages that gpt2jax needs: $image_held" >&2
"$venv/bin/python" -m pip install -q $image_held
bash scripts/fetch_wheels.sh "$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
    "$work/wheels" >&2
"$venv/bin/python" -m pip install -q --no-deps "$work"/wheels/*.whl
# The wheels' own needs that the image holds (promise's six, TFDS's psutil...), as the image has them.
for _ in 1 2 3; do
    needed=$("$venv/bin/python" - <<'PY'
import importlib.metadata as metadata, re
from packaging.markers import default_environment
from packaging.requirements import Requirement
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
listed = lambda path: {normal(re.split(r"[\s=<>]", line)[0]) for line in open(path) if line.strip() and not line.startswith("#")}
image, wheels = listed("bench/gpu_image_packages.txt"), listed("bench/wheels.txt")
installed = {normal(dist.metadata["Name"]) for dist in metadata.distributions()}
wanted, todo, seen = set(), [(name, ("",)) for name in wheels], set()
while todo:
    name, extras = todo.pop()
    if (name, extras) in seen or name not in installed:
        continue
    seen.add((name, extras))
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        environments = [dict(default_environment(), extra=extra) for extra in extras]
        if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
            continue
        wanted.add(normal(requirement.name))
        todo.append((normal(requirement.name), ("", *sorted(requirement.extras))))
outside = sorted(wanted - image - wheels)
if outside:
    raise SystemExit(f"error: the wheels need {', '.join(outside)}, which neither the image nor bench/wheels.txt holds.")
print(" ".join(sorted(wanted - installed)))
PY
)
    [[ -z $needed ]] && break
    echo "installing the image's packages that the wheels need: $needed" >&2
    "$venv/bin/python" -m pip install -q $needed
done
"$venv/bin/python" - <<'PY' >&2
import importlib.metadata, re
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
listed = lambda path: {normal(re.split(r"[\s=<>]", line)[0]) for line in open(path) if line.strip() and not line.startswith("#")}
known = listed("bench/gpu_image_packages.txt") | listed("bench/wheels.txt") | {"pip", "setuptools"}
extra = sorted({normal(d.metadata["Name"]) for d in importlib.metadata.distributions()} - known)
print(f"installed beside them, which the image does not list (harmless unless imported): {', '.join(extra) or 'none'}")
PY
PYTHONPATH=$PWD "$venv/bin/python" bench/gpu.py --check_imports --out "$work/out"
