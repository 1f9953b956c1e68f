"""Real English from Debian's packages as JSONL, for ``data.source=text:DIR/*.jsonl``.

apt-get install -y dict-gcide dict-wn dict-foldoc dict-jargon dict-devil bible-kjv python3.11-doc
python experiments/english_corpus.py data/english

Five dictionaries that dictd serves, the King James Bible and Python's manual, all free to copy:
- ``dict-gcide``: GNU's Collaborative International Dictionary of English, Webster's 1913
  with its literary quotations and later additions (GPL-3+);
- ``dict-wn``: WordNet 3.0's glosses and examples (the WordNet licence, BSD-like);
- ``dict-foldoc``: the Free On-line Dictionary of Computing (GPL-2+);
- ``dict-jargon``: the Jargon File 4.4.7 (public domain);
- ``dict-devil``: Ambrose Bierce's The Devil's Dictionary, 1911 (public domain);
- ``bible-kjv-text``: the 1611 King James Version (public domain), which ``bible`` prints;
- ``python3.11-doc``: the Python 3.11 documentation's reStructuredText sources (PSF licence),
  one document a page.

dictd stores each dictionary as one dictzip file and an index of (headword, offset, length)
with offsets in its own base-64 digits. Each entry is unwrapped into one paragraph (dictd
wraps at 72 columns and indents continuation lines). Neighbouring entries share words
(Abdication, Abdicative, Abdicator), so a document is a page of ``ENTRIES_PER_PAGE``
consecutive entries, and the validation split (every k-th document) takes whole pages
rather than the neighbours of training entries; the Bible is one document a chapter.
22.6M GPT-2 tokens in all; the corpus is never committed.
"""

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

DICTD = Path("/usr/share/dictd")
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
DICTIONARIES = ("gcide", "wn", "foldoc", "jargon", "devil")
ENTRIES_PER_PAGE = 64
DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")
WHITESPACE = re.compile(r"\s+")


def dictd_number(digits: str) -> int:
    value = 0
    for digit in digits:
        value = value * 64 + DICTD_DIGITS.index(digit)
    return value


def dictionary_entries(name: str) -> list[str]:
    """Each entry once, in the dictionary's order, unwrapped. WordNet repeats a synset's gloss
    under each of its words (".22 caliber", ".22-calibre", ...), so an entry whose text after its
    headword was already written is left out; dictd's own 00-database-* headers (URL, licence)
    are not English prose and are left out too."""
    text = gzip.open(DICTD / f"{name}.dict.dz", "rb").read()
    spans: dict[tuple[int, int], str] = {}
    for line in (DICTD / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        headword, offset, length = line.split("\t")[:3]
        spans.setdefault((dictd_number(offset), dictd_number(length)), headword)
    entries, seen = [], set()
    for (start, length), headword in sorted(spans.items()):
        entry = WHITESPACE.sub(" ", text[start : start + length].decode("utf-8", errors="replace")).strip()
        body = entry[len(headword) :] if entry.lower().startswith(headword.lower()) else entry
        if entry.startswith(("00-database", "00database")) or body in seen:
            continue
        seen.add(body)
        entries.append(entry)
    return entries


def bible_chapters() -> list[str]:
    printed = subprocess.run(
        ["bible", "-f", "Genesis1:1-Revelation22:21"], capture_output=True, text=True, check=True
    ).stdout
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in printed.splitlines():
        match = VERSE.match(line)
        if match:
            book, chapter, _, verse = match.groups()
            chapters.setdefault((book, int(chapter)), []).append(verse.strip())
    if len(chapters) != 1189:
        sys.exit(f"error: bible printed {len(chapters)} chapters, not the 1189 of the King James Version.")
    return [" ".join(verses) for verses in chapters.values()]


def main(out: str) -> None:
    packages = [f"dict-{name}" for name in DICTIONARIES if not (DICTD / f"{name}.dict.dz").exists()]
    packages += ["bible-kjv"] if shutil.which("bible") is None else []
    packages += [] if PYTHON_DOCS.is_dir() else ["python3.11-doc"]
    if packages:
        sys.exit(f"error: missing {', '.join(packages)}; apt-get install -y {' '.join(packages)}, then run this again.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in DICTIONARIES:
        entries = dictionary_entries(name)
        pages = [entries[i : i + ENTRIES_PER_PAGE] for i in range(0, len(entries), ENTRIES_PER_PAGE)]
        write_jsonl(out_dir / f"{name}.jsonl", ["\n\n".join(page) for page in pages])
        print(f"{name}: {len(entries):,} entries in {len(pages):,} pages")
    chapters = bible_chapters()
    write_jsonl(out_dir / "kjv.jsonl", chapters)
    print(f"kjv: {len(chapters):,} chapters")
    pages = [path.read_text(encoding="utf-8") for path in sorted(PYTHON_DOCS.rglob("*.rst.txt"))]
    write_jsonl(out_dir / "python_docs.jsonl", pages)
    print(f"python_docs: {len(pages):,} pages")


def write_jsonl(path: Path, documents: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for document in documents:
            file.write(json.dumps({"text": document}) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/english_corpus.py OUT_DIR")
    main(sys.argv[1])
