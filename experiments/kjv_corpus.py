"""The King James Bible as one .txt file per chapter, for ``data.source=text:DIR/*.txt``.

apt-get install -y bible-kjv && python experiments/kjv_corpus.py data/kjv

Debian's bible-kjv-text ships the 1611 King James Version (public domain; its Debian
packaging is GPL-2+) compressed for the ``bible`` program of bible-kjv, which prints it. This
script asks ``bible`` for every verse from Genesis 1:1 to Revelation 22:21, drops the verse
references ("Ge1:1 "), and writes each chapter's verses as one paragraph, one document a
chapter: 1189 files, 4.3 MB of English, about 1.0M GPT-2 tokens. The corpus is never committed.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def main(out: str) -> None:
    if shutil.which("bible") is None:
        sys.exit("error: the bible program is missing; apt-get install -y bible-kjv, then run this again.")
    text = subprocess.run(
        ["bible", "-f", "Genesis1:1-Revelation22:21"], capture_output=True, text=True, check=True
    ).stdout
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in text.splitlines():
        match = VERSE.match(line)
        if match:
            book, chapter, _, verse = match.groups()
            chapters.setdefault((book, int(chapter)), []).append(verse.strip())
    if len(chapters) != 1189:
        sys.exit(f"error: bible printed {len(chapters)} chapters, not the 1189 of the King James Version.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, ((book, chapter), verses) in enumerate(chapters.items()):
        (out_dir / f"{index:04d}_{book}{chapter}.txt").write_text(" ".join(verses) + "\n")
    print(f"{out_dir}: {len(chapters)} chapters, {sum(len(' '.join(v)) for v in chapters.values()):,} characters")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/kjv_corpus.py OUT_DIR")
    main(sys.argv[1])
