#!/usr/bin/env python3
"""What a kernel's loops issue, read from its SASS: for a GPU-less look at a kernel
before it runs (where the waits sit, how many instructions a tile costs, which unit
they load).

    python3 tools/py/sass_loops.py FILE.cubin|FILE.sass KERNEL_REGEX [--body]
        [--skip-after REGEX]

A .cubin is disassembled with cuobjdump (`$CUOBJDUMP`, else on PATH, else the one
scripts/fetch-cuobjdump.sh puts in .deps/ from CUDA's PyPI wheels, with the nvdisasm
it runs, where the toolkit has neither). Every kernel
whose mangled name matches KERNEL_REGEX is listed with each of its loops (a backward
branch and the instructions from its target to it): instructions in all and by
unit, and the order of the warpgroup MMAs, waits and barriers within the loop, with
the number of special-function (MUFU) instructions between them. A loop's count
includes the branches it skips (a masked tail, a load guarded by `if`), so it is an
upper bound on one iteration; --skip-after REGEX also counts the loop without the
block that the first forward branch after an instruction matching REGEX jumps over
(an iteration that takes that branch: for the attention kernels, `gsb0, 0x1` drops
the last tile's key mask, so the count is a full tile's). --body prints the loop's
instructions.

Units are by opcode, as the Hopper tuning guide and ncu's pipe names group them:
tensor (HGMMA, HMMA), xu (MUFU), fma (FFMA, FMUL, FADD, IMAD...), alu (FMNMX, FSEL,
ISETP, LOP3, F2FP, PRMT...), lsu (shared and global memory, shuffles), uniform
(U-prefixed: the uniform datapath, off the vector pipes), sync (barriers, waits).
"""

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

UNITS = [
    ("tensor", r"^(HGMMA|HMMA|IMMA|QGMMA)"),
    ("xu", r"^MUFU"),
    ("sync", r"^(WARPGROUP|BAR|DEPBAR|SYNCS|MEMBAR|WARPSYNC|LDGDEPBAR|ARRIVES|NANOSLEEP)"),
    ("lsu", r"^(LD|ST|LDS|STS|LDG|STG|LDSM|STSM|SHFL|ATOM|RED|LDGSTS|UTMA|UBLKCP)"),
    ("uniform", r"^(U[A-Z0-9]+|R2UR|S2UR|PLOP3|VOTEU)"),
    ("branch", r"^(BRA|BSSY|BSYNC|CALL|RET|EXIT|BREAK|JMP)"),
    ("fma", r"^(FFMA|FMUL|FADD|IMAD|IMUL|HFMA2|HMUL2|HADD2|DFMA)"),
    ("alu", r"^"),  # everything else: FMNMX, FSEL, FSETP, ISETP, LOP3, F2FP, PRMT, MOV...
]


def unit(op):
    for name, pattern in UNITS:
        if re.match(pattern, op):
            return name
    return "alu"


def cuobjdump():
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if tool:
        return tool
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".deps")
    found = sorted(glob.glob(os.path.join(root, "cuobjdump-*", "cuobjdump")))
    if found:
        return found[-1]
    sys.exit("sass_loops: no cuobjdump (run scripts/fetch-cuobjdump.sh, or set CUOBJDUMP)")


def functions(text):
    """{mangled name: [(address, instruction text without predicate-free spacing)]}."""
    out = {}
    for chunk in text.split("Function : ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        code = []
        for line in chunk.split("\n"):
            m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
            if m:
                code.append((int(m.group(1), 16), m.group(2).strip()))
        out[name] = code
    return out


def opcode(text):
    body = re.sub(r"^@!?U?P[T0-9]+\s+", "", text)
    return body.split()[0] if body else ""


def loops(code):
    """(start index, end index) of each backward branch's range, innermost first."""
    index = {addr: i for i, (addr, _) in enumerate(code)}
    found = []
    for i, (addr, text) in enumerate(code):
        m = re.match(r"(?:@!?U?P[T0-9]+\s+)?BRA(?:\.[A-Z.]+)?\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", text)
        if m:
            target = int(m.group(1), 16)
            if target <= addr and target in index:
                found.append((index[target], i))
    return sorted(found, key=lambda r: r[1] - r[0])


def without_skipped(body, after):
    """body less the block the first forward branch after `after` jumps over; None if
    there is no such branch."""
    seen = False
    for i, (addr, text) in enumerate(body):
        if not seen:
            seen = bool(re.search(after, text))
            continue
        m = re.match(r"(?:@!?U?P[T0-9]+\s+)BRA\s+0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) > addr:
            target = int(m.group(1), 16)
            return [(a, t) for a, t in body if not addr < a < target]
    return None


def describe(code, start, end, show_body, skip_after=None):
    body = code[start : end + 1]
    units = collections.Counter(unit(opcode(t)) for _, t in body)
    ops = collections.Counter(opcode(t) for _, t in body)
    print(f"  loop 0x{body[0][0]:x}-0x{body[-1][0]:x}: {len(body)} instructions")
    print("    by unit: " + ", ".join(f"{u} {units[u]}" for u, _ in UNITS if units[u]))
    top = ", ".join(f"{op} {n}" for op, n in ops.most_common(14))
    print(f"    most common: {top}")
    # The order of the MMAs, the waits and the special-function work.
    events, mufu = [], 0
    for _, t in body:
        op = opcode(t)
        if op.startswith("MUFU"):
            mufu += 1
            continue
        if re.match(r"^(HGMMA|WARPGROUP|BAR|SYNCS|DEPBAR)", op):
            if mufu:
                events.append(f"[{mufu} MUFU]")
                mufu = 0
            short = re.sub(r"\s+", " ", re.sub(r"^@!?U?P[T0-9]+\s+", "", t))
            short = re.sub(r"(HGMMA\.\S+).*", r"\1", short)
            if events and events[-1].startswith(short + " x"):
                n = int(events[-1].rsplit("x", 1)[1]) + 1
                events[-1] = f"{short} x{n}"
            elif events and events[-1] == short:
                events[-1] = f"{short} x2"
            else:
                events.append(short)
    if mufu:
        events.append(f"[{mufu} MUFU]")
    print("    order: " + " | ".join(events))
    if skip_after:
        rest = without_skipped(body, skip_after)
        if rest is not None:
            units = collections.Counter(unit(opcode(t)) for _, t in rest)
            print(f"    without the skipped block: {len(rest)} instructions; " +
                  ", ".join(f"{u} {units[u]}" for u, _ in UNITS if units[u]))
    if show_body:
        for addr, t in body:
            print(f"      {addr:05x}  {t}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("kernel", help="regex on the mangled kernel name")
    ap.add_argument("--body", action="store_true", help="print each loop's instructions")
    ap.add_argument("--min", type=int, default=40, help="skip loops shorter than this")
    ap.add_argument("--skip-after", metavar="REGEX",
                    help="also count each loop without the block the first forward branch "
                         "after REGEX jumps over")
    args = ap.parse_args()
    if args.file.endswith(".sass"):
        text = open(args.file).read()
    else:
        text = subprocess.run([cuobjdump(), "-sass", args.file], check=True,
                              capture_output=True, text=True).stdout
    matched = 0
    for name, code in functions(text).items():
        if not re.search(args.kernel, name):
            continue
        matched += 1
        print(f"{name}: {len(code)} instructions")
        for start, end in loops(code):
            if end - start + 1 >= args.min:
                describe(code, start, end, args.body, args.skip_after)
    if not matched:
        sys.exit(f"sass_loops: no kernel matches {args.kernel!r}")


if __name__ == "__main__":
    main()
