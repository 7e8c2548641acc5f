"""tools/py/sass_loops.py on a hand-written listing in cuobjdump's format: it finds the
loop (the backward branch and its target), counts its instructions by unit, gives the
order of its MMAs, waits and special-function instructions, and with --skip-after
leaves out the block that a forward branch jumps over."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SASS_LOOPS = ROOT / "tools" / "py" / "sass_loops.py"

# One kernel: a set-up instruction, then a loop from 0x0020 to the branch at 0x00f0
# with a guarded block (0x0060-0x0070) that the branch at 0x0050 skips, then the exit.
LISTING = """
\t\tFunction : _Z6kernelPf
\t.headerflags\t@"EF_CUDA_SM90"
        /*0000*/                   MOV R1, c[0x0][0x28] ;            /* 0x00000a0000017a02 */
        /*0010*/                   S2R R0, SR_TID.X ;                 /* 0x0000000000007919 */
        /*0020*/                   WARPGROUP.ARRIVE ;                 /* 0x00000000000079c5 */
        /*0030*/                   HGMMA.64x64x16.F32 R24, R88, gdesc[UR4], RZ, !UPT ; /* 0x0 */
        /*0040*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;    /* 0x00008000000079c5 */
        /*0050*/               @P0 BRA 0x80 ;                         /* 0x0000000000080947 */
        /*0060*/                   FSEL R24, R24, -INF , !P1 ;        /* 0xff80000018187808 */
        /*0070*/                   FSEL R25, R25, -INF , !P2 ;        /* 0xff80000019197808 */
        /*0080*/                   FFMA R24, R24, UR6, -R17 ;         /* 0x0000000618187c23 */
        /*0090*/                   MUFU.EX2 R24, R24 ;                /* 0x0000001800187308 */
        /*00a0*/                   MUFU.EX2 R25, R25 ;                /* 0x0000001900197308 */
        /*00b0*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;    /* 0x00008000000079c5 */
        /*00c0*/                   FMNMX R15, R24, R25, !PT ;         /* 0x0000001918 0f7209 */
        /*00d0*/                   UIADD3 UR5, UR5, 0x1, URZ ;        /* 0x0000000105057890 */
        /*00e0*/                   ISETP.GE.AND P0, PT, R0, UR5, PT ; /* 0x0000000500007c0c */
        /*00f0*/              @!P0 BRA 0x20 ;                         /* 0xffffff2000008947 */
        /*0100*/                   EXIT ;                             /* 0x000000000000794d */
"""


def run(tmp_path, *args):
    listing = tmp_path / "kernel.sass"
    listing.write_text(LISTING)
    return subprocess.run([sys.executable, str(SASS_LOOPS), str(listing), "kernel", *args],
                          check=True, capture_output=True, text=True).stdout


def test_counts_the_loop_by_unit_and_gives_its_order(tmp_path):
    out = run(tmp_path, "--min", "5")
    assert "_Z6kernelPf: 17 instructions" in out
    assert "loop 0x20-0xf0: 14 instructions" in out
    assert ("by unit: tensor 1, xu 2, sync 3, uniform 1, branch 2, fma 1, alu 4") in out
    assert ("order: WARPGROUP.ARRIVE | HGMMA.64x64x16.F32 | WARPGROUP.DEPBAR.LE gsb0, 0x1 | "
            "[2 MUFU] | WARPGROUP.DEPBAR.LE gsb0, 0x0") in out
    assert "without the skipped block" not in out


def test_skip_after_leaves_out_the_guarded_block(tmp_path):
    out = run(tmp_path, "--min", "5", "--skip-after", "gsb0, 0x1")
    assert "without the skipped block: 12 instructions; " in out
    assert "alu 2" in out.split("without the skipped block")[1]


def test_short_loops_are_left_out_and_an_unknown_kernel_fails(tmp_path):
    assert "loop" not in run(tmp_path, "--min", "15")
    listing = tmp_path / "kernel.sass"
    result = subprocess.run([sys.executable, str(SASS_LOOPS), str(listing), "nothing_like_it"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "no kernel matches" in result.stderr
