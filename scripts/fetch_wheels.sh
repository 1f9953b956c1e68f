#!/usr/bin/env bash
# The wheels the GPU machines' image lacks (bench/wheels.txt), for its Python on manylinux x86_64,
# into a git-ignored folder that a device run carries (64 MiB at most travel with the tree).
#
#   bash scripts/fetch_wheels.sh [PYTHON_VERSION [DIR]]     (defaults: 3.12, .whl)
#
# DIR is emptied of wheels first: two versions of one package stop the install on the device.
# A package with no wheel on PyPI (promise) is built here, and kept only if pure Python. Prints
# each wheel's size and the total, and exits 1 over 64 MiB. On the device, before gpt2jax runs:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
dir=${2:-.whl}
limit_bytes=$((64 * 1024 * 1024))
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
mkdir -p "$dir"
rm -f "$dir"/*.whl
sed -e 's/#.*//' bench/wheels.txt | while read -r requirement; do
    [[ -z $requirement ]] && continue
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
        --implementation cp "${platforms[@]}" -d "$dir" "$requirement" 2>/dev/null; then
        built=$(mktemp -d)
        python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$built" "$requirement"
        if ! compgen -G "$built/*-none-any.whl" >/dev/null; then
            echo "error: $requirement has no wheel for Python $python_version and is not pure Python; find one." >&2
            exit 1
        fi
        mv "$built"/*-none-any.whl "$dir"/
        rm -rf "$built"
    fi
done
total=0
for wheel in "$dir"/*.whl; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    printf '%10d  %s\n' "$size" "$(basename "$wheel")"
done
printf '%10d  in all (%s MiB), %d wheels, for Python %s\n' "$total" "$(awk "BEGIN {printf \"%.2f\", $total / 1048576}")" \
    "$(ls "$dir"/*.whl | wc -l)" "$python_version"
if ((total > limit_bytes)); then
    echo "error: the wheels take $total bytes, over the 64 MiB a device run carries; drop one from bench/wheels.txt." >&2
    exit 1
fi
