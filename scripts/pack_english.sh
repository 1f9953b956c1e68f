#!/usr/bin/env bash
# The English corpus (experiments/english_corpus.py's JSONL) packed for a device run, which carries at most
# 64 MiB (the GPU image's wheels take 9.5 of them): bench/gpu_sweep.py unpacks and tokenizes it there.
#
#   bash scripts/pack_english.sh [SRC_DIR [ARCHIVE]]     (defaults: data/english, .corpus/english.tar.xz)
#
# The archive holds SRC_DIR's *.jsonl at its root. xz -9 packs the 75.3 MB corpus into 17.0 MB in 2m25s on
# one core (zstd -19 would be larger). Prints both sizes; exits 1 over 54 MiB, what the wheels leave.
set -euo pipefail
src=${1:-data/english}
archive=${2:-.corpus/english.tar.xz}
limit_bytes=$((54 * 1024 * 1024))
shopt -s nullglob
files=("$src"/*.jsonl)
if ((${#files[@]} == 0)); then
    echo "error: no *.jsonl in $src; run python experiments/english_corpus.py $src first." >&2
    exit 1
fi
mkdir -p "$(dirname "$archive")"
tar -C "$src" -cf - "${files[@]##*/}" | xz -9 -T1 >"$archive.partial"
mv "$archive.partial" "$archive"
text_bytes=$(cat "${files[@]}" | wc -c)
packed_bytes=$(stat -c %s "$archive")
echo "$archive: $packed_bytes bytes packed from $text_bytes bytes of JSONL in ${#files[@]} files"
if ((packed_bytes > limit_bytes)); then
    echo "error: $archive is over the $limit_bytes bytes a device run has beside the wheels; pack less." >&2
    exit 1
fi
