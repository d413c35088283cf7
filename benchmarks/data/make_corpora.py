"""Extract the benchmark's two text corpora from installed Debian packages.

Corpus A (pretraining) is a deterministic quarter of the GNU Collaborative International
Dictionary of English (``dict-gcide``) with its dictd markup stripped. Corpus B (finetuning) is the
English fortune cookies of the ``fortunes`` and ``fortunes-min`` packages, without ``off/``.

Both outputs are gzipped UTF-8 text (gzip mtime 0, so reruns are byte-identical) holding one
document per entry, documents separated by a line containing only ``%`` (the fortune file
format). Run once, as root, on Debian bookworm::

    apt-get update
    apt-get install -y --no-install-recommends dict-gcide fortunes fortunes-min
    python benchmarks/data/make_corpora.py

The benchmark reads the committed outputs and never needs apt.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
GCIDE_DICT = Path("/usr/share/dictd/gcide.dict.dz")
GCIDE_INDEX = Path("/usr/share/dictd/gcide.index")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# ascii-art is drawings, translate-me is mostly Latin; neither is English prose.
FORTUNE_SKIP = frozenset({"ascii-art", "translate-me"})
SEPARATOR = "\n%\n"

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PRONUNCIATION = re.compile(r"\s*\\[^\\\n]*\\")  # `Absolute \Ab"so*lute\, n.`
_SOURCE_TAG = re.compile(r"^\s*\[(?:1913 Webster|PJC|WordNet[^]]*|Webster 1913 Suppl\.)\]\s*$")
_ACCENTED = re.compile(r"\[(?:['`\"^=~.,\-]([a-zA-Z]{1,2})|([a-zA-Z]{1,2})\^)\]")  # ['e] [a^]
_ENTITIES = {
    "ae": "ae",
    "AE": "AE",
    "oe": "oe",
    "OE": "OE",
    "imac": "i",
    "aum": "a",
    "eth": "th",
    "thorn": "th",
    "deg": " deg.",
    "sect": "sect.",
    "udd": "u",
    "yogh": "y",
    "root": "",
    "add": "",
    "asl": "",
    "bar": "",
}  # the last four mark pronunciations
_ENTITY = re.compile(r"\[(" + "|".join(_ENTITIES) + r")\]")


def _b64_int(text: str) -> int:
    """Decode a dictd index number (big-endian base 64)."""
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def gcide_entries() -> Iterator[str]:
    """Yield each GCIDE entry once, in file order, as raw dictd text."""
    spans: set[tuple[int, int]] = set()
    for line in GCIDE_INDEX.read_text(encoding="utf-8").splitlines():
        word, start, size = line.split("\t")
        if not word.startswith("00-"):  # database headers and licence banners
            spans.add((_b64_int(start), _b64_int(size)))
    raw = gzip.decompress(GCIDE_DICT.read_bytes())  # dictzip is gzip-compatible
    for offset, length in sorted(spans):
        yield raw[offset : offset + length].decode("utf-8", errors="replace")


def clean_gcide(entry: str) -> str | None:
    """Strip dictd markup from one entry; None if it is not clean text.

    Removes pronunciations ``\\...\\``, source tags (``[1913 Webster]``), cross-reference braces
    and accent codes (``['e]`` -> ``e``), and the 3-space body indent.
    """
    if "\ufffd" in entry:  # three entries carry stray cp1252 bytes
        return None
    entry = re.sub(r"\A(?:[ \t]*\n|[ \t]+\S.*\n)*", "", entry)  # a stray quotation tail
    lines = [
        _PRONUNCIATION.sub("", line, count=1) if i == 0 else line
        for i, line in enumerate(entry.rstrip().splitlines())
    ]
    lines = [line.removeprefix("   ").rstrip() for line in lines if not _SOURCE_TAG.match(line)]
    text = "\n".join(lines).replace("{", "").replace("}", "")
    text = _ACCENTED.sub(lambda m: m.group(1) or m.group(2), text)
    text = _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text if text.isascii() and text.count("\n") >= 1 else None


def fortunes() -> Iterator[str]:
    """Yield every English fortune once (exact duplicates dropped), files in name order."""
    seen: set[str] = set()
    for path in sorted(FORTUNE_DIR.iterdir()):
        if not path.is_file() or path.suffix in {".dat", ".u8"} or path.name in FORTUNE_SKIP:
            continue
        text = path.read_text(encoding="utf-8")
        # Overstrike (`_\bx`, `___\b\b\bxyz`) keeps the last layer; bells (`^G`) go.
        while (struck := re.sub("[^\b\n]\b", "", text)) != text:
            text = struck
        text = re.sub("[\x00-\x08\x0b-\x1f]", "", text)
        for entry in re.split(r"^%\n", text, flags=re.MULTILINE):
            # Corpus A has no tabs, so an unexpanded tab costs ~23 nats after pretraining.
            lines = entry.strip("\n").splitlines()
            entry = "\n".join(line.expandtabs(4).rstrip() for line in lines)
            if entry.strip() and entry not in seen:
                seen.add(entry)
                yield entry


def write_corpus(path: Path, documents: list[str]) -> None:
    """Write documents as reproducible gzipped text, separated by ``%`` lines."""
    assert not any(SEPARATOR in doc or doc == "%" for doc in documents)
    data = (SEPARATOR.join(documents) + "\n").encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    print(
        f"{path.name}: {len(documents)} documents, {len(data)} bytes, {path.stat().st_size} gzipped"
    )


def main() -> None:
    """Write both corpora and copy each package's copyright file beside it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gcide-stride", type=int, default=4, help="keep every n-th clean GCIDE entry (default: 4)"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    entries = [e for e in map(clean_gcide, gcide_entries()) if e is not None]
    write_corpus(args.out / "gcide.txt.gz", entries[:: args.gcide_stride])
    write_corpus(args.out / "fortunes.txt.gz", list(fortunes()))
    shutil.copyfile("/usr/share/doc/dict-gcide/copyright", args.out / "gcide.COPYRIGHT")
    shutil.copyfile("/usr/share/doc/fortunes-min/copyright", args.out / "fortunes.COPYRIGHT")


if __name__ == "__main__":
    main()
