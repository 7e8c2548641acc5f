#!/usr/bin/env python3
"""Generates src/text/unicode_tables.inc: the Unicode data kiln's CLIP tokenizer needs.

The tokenizer must give the ids of transformers' CLIPTokenizer, which runs on the Rust
`tokenizers` library. That library does not use one Unicode version throughout:

  * NFC comes from its `unicode-normalization-alignments` crate, whose data is older than
    Python's (some combining classes added since Unicode 9 are missing, and U+11938 has no
    decomposition);
  * Lowercase is Rust's `char::to_lowercase`, newer than Python 3.11's Unicode 14;
  * `\\s`, `\\p{L}` and `\\p{N}` in its regexes are Oniguruma's, also newer than Unicode 14.

So the tables are built from Python's unicodedata and then reconciled with what the installed
`tokenizers` library actually does, probed code point by code point: letters, numbers,
whitespace and lowercase are taken from the library; the normalisation data is Python's,
with the library's omissions applied, and checked against the library's NFC and NFD.

Run with the project's Python environment (the one holding transformers/tokenizers):
    /work/pyenv/bin/python tools/py/gen_unicode_tables.py
"""

import argparse
import platform
import sys
import unicodedata
from pathlib import Path

import tokenizers
from tokenizers import Regex, normalizers

MAX_CODE_POINT = 0x10FFFF
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def scalar_values():
    """Every code point that can appear in valid UTF-8 (surrogates cannot)."""
    for cp in range(MAX_CODE_POINT + 1):
        if not 0xD800 <= cp <= 0xDFFF:
            yield cp


def library_class(pattern):
    """Code points that the library's regex engine matches with `pattern`."""
    remove = normalizers.Replace(Regex(pattern), "")
    return [cp for cp in scalar_values() if remove.normalize_str(chr(cp)) == ""]


def to_ranges(code_points):
    ranges = []
    for cp in code_points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return ranges


def library_lowercase():
    """{cp: [lowercase cps]} for every code point whose lowercase differs from itself."""
    lowercase = normalizers.Lowercase()
    mapping = {}
    for cp in scalar_values():
        lowered = lowercase.normalize_str(chr(cp))
        if lowered != chr(cp):
            mapping[cp] = [ord(c) for c in lowered]
    return mapping


def lowercase_runs(single):
    """Groups one-to-one mappings into runs [first, last, delta, stride]: every stride-th code
    point from first to last maps to itself + delta (stride 2 covers alternating upper/lower)."""
    runs = []
    for cp in sorted(single):
        delta = single[cp] - cp
        if runs:
            first, last, run_delta, stride = runs[-1]
            if run_delta == delta:
                if stride == 0 and cp - last in (1, 2):
                    runs[-1] = [first, cp, delta, cp - last]
                    continue
                if stride and cp - last == stride:
                    runs[-1][1] = cp
                    continue
        runs.append([cp, cp, delta, 0])
    return [[f, l, d, s or 1] for f, l, d, s in runs]


def normalization_data():
    """Combining classes and canonical decompositions as the library sees them."""
    nfd = normalizers.NFD().normalize_str
    nfc = normalizers.NFC().normalize_str

    decompositions = {}  # cp -> (first, second or 0)
    for cp in scalar_values():
        if HANGUL_FIRST <= cp <= HANGUL_LAST:
            continue  # composed and decomposed arithmetically
        fields = unicodedata.decomposition(chr(cp)).split()
        if not fields or fields[0].startswith("<"):
            continue
        parts = [int(f, 16) for f in fields]
        if nfd(chr(cp)) == chr(cp):
            print(f"  library has no decomposition for U+{cp:04X}; following it", file=sys.stderr)
            continue
        decompositions[cp] = (parts[0], parts[1] if len(parts) > 1 else 0)

    def composes(cp, first, second):
        # A pair decomposition recomposes unless it is a composition exclusion.
        return second != 0 and nfc(chr(cp)) == chr(cp)

    # A combining class only matters for code points that survive decomposition. The library
    # knows some of Python's classes as 0: find them by whether it reorders a mark past a
    # reference mark (U+0334 has class 1, U+0301 class 230).
    def reorders(text):
        return nfd(text) != nfd(text[0]) + nfd(text[1:])

    def library_order_signature(cp):
        c = chr(cp)
        return (reorders(c + "\u0334"), reorders("\u0301" + c), reorders(c + "\u0301"))

    def expected_signature(ccc):
        return (ccc > 1, 0 < ccc < 230, ccc > 230)

    combining_class = {}
    for cp in scalar_values():
        if cp in decompositions or HANGUL_FIRST <= cp <= HANGUL_LAST:
            continue
        ccc = unicodedata.combining(chr(cp))
        seen = library_order_signature(cp)
        if seen != expected_signature(ccc):
            if ccc != 0 and seen == expected_signature(0):
                ccc = 0  # the library's data predates this mark's class
            else:
                sys.exit(f"U+{cp:04X}: library orders it as {seen}, Python class is {ccc}")
        if ccc:
            combining_class[cp] = ccc

    # Check the reconciled data against the library on every single code point.
    for cp in scalar_values():
        c = chr(cp)
        want_nfd = nfd(c)
        got = []

        def expand(x):
            if x in decompositions:
                first, second = decompositions[x]
                expand(first)
                if second:
                    expand(second)
            else:
                got.append(x)

        if HANGUL_FIRST <= cp <= HANGUL_LAST:
            continue
        expand(cp)
        if "".join(map(chr, got)) != want_nfd:
            sys.exit(f"U+{cp:04X}: NFD disagrees with the library")

    return (
        {cp: (f, s, composes(cp, f, s)) for cp, (f, s) in decompositions.items()},
        combining_class,
    )


def class_ranges(combining_class):
    ranges = []
    for cp in sorted(combining_class):
        ccc = combining_class[cp]
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == ccc:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, ccc])
    return ranges


def emit_rows(out, items, width=100):
    """Appends the items to out, as many to a line as fit in `width` columns."""
    line = "   "
    for item in items:
        if len(line) + 1 + len(item) > width:
            out.append(line)
            line = "   "
        line += " " + item
    if line.strip():
        out.append(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = Path(__file__).resolve().parents[2]
    parser.add_argument("--out", type=Path, default=repo / "src/text/unicode_tables.inc")
    args = parser.parse_args()

    letters = to_ranges(library_class(r"\p{L}"))
    numbers = to_ranges(library_class(r"\p{N}"))
    spaces = to_ranges(library_class(r"\s"))
    lowercase = library_lowercase()
    single = {cp: m[0] for cp, m in lowercase.items() if len(m) == 1}
    expansions = {cp: m for cp, m in lowercase.items() if len(m) > 1}
    if any(len(m) > 3 for m in expansions.values()):
        sys.exit("a lowercase mapping longer than 3 code points: widen LowercaseExpansion")
    runs = lowercase_runs(single)
    decompositions, combining_class = normalization_data()
    ccc_ranges = class_ranges(combining_class)

    h = lambda cp: f"0x{cp:X}" if cp else "0"
    out = [
        "// Generated by tools/py/gen_unicode_tables.py; do not edit.",
        f"// Python {platform.python_version()} (unicodedata {unicodedata.unidata_version}),"
        f" reconciled with tokenizers {tokenizers.__version__}:",
        "// letters, numbers, whitespace and lowercase as that library's regex engine and",
        "// char::to_lowercase see them; NFC data as its normaliser has it.",
    ]

    def table(comment, declaration, items):
        out.extend(["", *(f"// {line}" for line in comment.split("\n")), f"{declaration} = {{"])
        emit_rows(out, items)
        out.append("};")

    table(f"\\p{{L}}: {len(letters)} ranges.", "constexpr CodePointRange kLetterRanges[]",
          [f"{{{h(a)}, {h(b)}}}," for a, b in letters])
    table(f"\\p{{N}}: {len(numbers)} ranges.", "constexpr CodePointRange kNumberRanges[]",
          [f"{{{h(a)}, {h(b)}}}," for a, b in numbers])
    table("\\s.", "constexpr CodePointRange kSpaceRanges[]", [f"{{{h(a)}, {h(b)}}}," for a, b in spaces])
    table(f"One-to-one lowercase mappings: {len(single)} code points in {len(runs)} runs.",
          "constexpr LowercaseRun kLowercaseRuns[]",
          [f"{{{h(a)}, {h(b)}, {d}, {s}}}," for a, b, d, s in runs])
    table("Lowercase mappings to several code points.",
          "constexpr LowercaseExpansion kLowercaseExpansions[]",
          [f"{{{h(cp)}, {{{', '.join(h(x) for x in (m + [0] * 3)[:3])}}}}}," for cp, m in sorted(expansions.items())])
    table(f"Canonical combining classes other than 0: {len(ccc_ranges)} ranges.",
          "constexpr CombiningClassRange kCombiningClassRanges[]",
          [f"{{{h(a)}, {h(b)}, {c}}}," for a, b, c in ccc_ranges])
    table("Canonical decompositions, one level (Hangul syllables are arithmetic): composite,\n"
          "first, second (0 for a singleton), and whether NFC recomposes the pair.",
          "constexpr CanonicalDecomposition kCanonicalDecompositions[]",
          [f"{{{h(cp)}, {h(f)}, {h(s)}, {int(c)}}}," for cp, (f, s, c) in sorted(decompositions.items())])
    out.append("")
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out}: {len(out)} lines", file=sys.stderr)


if __name__ == "__main__":
    main()
