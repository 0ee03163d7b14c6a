"""Pystone: the Python port of Dhrystone 1.1, the CPU figure of ``slapos-collect bench``.

Pystone left the standard library with Python 3; this is a fresh rendering of
its published structure: a ``Record`` with a pointer, a discriminant, an
enumeration, an integer and a string; ``Proc0`` runs a fixed loop calling
``Proc1``..``Proc8`` and ``Func1``..``Func3`` on module globals and arrays, and
the loop's time, less that of an empty loop of the same length, gives
pystones per second. Module globals are deliberate: their look-up cost is part
of what the benchmark has always measured, so figures stay comparable.

Run ``python -m slapos_collect_recipe.pystone [LOOPS]`` to print one figure.
"""

from __future__ import annotations

import sys
import time

LOOPS = 50000

# The enumeration of Dhrystone.
Ident1, Ident2, Ident3, Ident4, Ident5 = 1, 2, 3, 4, 5


class Record:
    def __init__(self, PtrComp=None, Discr=0, EnumComp=0, IntComp=0, StringComp="") -> None:
        self.PtrComp = PtrComp
        self.Discr = Discr
        self.EnumComp = EnumComp
        self.IntComp = IntComp
        self.StringComp = StringComp

    def copy(self) -> Record:
        return Record(self.PtrComp, self.Discr, self.EnumComp, self.IntComp, self.StringComp)


# The globals the procedures share.
IntGlob = 0
BoolGlob = False
Char1Glob = "\0"
Char2Glob = "\0"
Array1Glob = [0] * 51
Array2Glob = [[0] * 51 for _ in range(51)]
PtrGlb: Record | None = None
PtrGlbNext: Record | None = None


def _reset() -> None:
    """Start every measurement from the same state."""
    global IntGlob, BoolGlob, Char1Glob, Char2Glob, Array1Glob, Array2Glob, PtrGlb, PtrGlbNext
    IntGlob, BoolGlob, Char1Glob, Char2Glob = 0, False, "\0", "\0"
    Array1Glob = [0] * 51
    Array2Glob = [[0] * 51 for _ in range(51)]
    PtrGlb = PtrGlbNext = None


def Proc0(loops: int = LOOPS) -> float:
    """Run the fixed loop ``loops`` times; return its net CPU-bound wall time in seconds."""
    global IntGlob, BoolGlob, Char1Glob, Char2Glob, Array1Glob, Array2Glob, PtrGlb, PtrGlbNext

    clock = time.perf_counter
    start = clock()
    for _ in range(loops):
        pass
    empty = clock() - start

    PtrGlbNext = Record()
    PtrGlb = Record(PtrGlbNext, Ident1, Ident3, 40, "DHRYSTONE PROGRAM, SOME STRING")
    String1Loc = "DHRYSTONE PROGRAM, 1'ST STRING"
    Array2Glob[8][7] = 10

    start = clock()
    for _ in range(loops):
        Proc5()
        Proc4()
        IntLoc1 = 2
        IntLoc2 = 3
        String2Loc = "DHRYSTONE PROGRAM, 2'ND STRING"
        EnumLoc = Ident2
        BoolGlob = not Func2(String1Loc, String2Loc)
        while IntLoc1 < IntLoc2:
            IntLoc3 = 5 * IntLoc1 - IntLoc2
            IntLoc3 = Proc7(IntLoc1, IntLoc2)
            IntLoc1 = IntLoc1 + 1
        Proc8(Array1Glob, Array2Glob, IntLoc1, IntLoc3)
        PtrGlb = Proc1(PtrGlb)
        CharIndex = "A"
        while CharIndex <= Char2Glob:
            if EnumLoc == Func1(CharIndex, "C"):
                EnumLoc = Proc6(Ident1)
            CharIndex = chr(ord(CharIndex) + 1)
        IntLoc3 = IntLoc2 * IntLoc1
        IntLoc2 = IntLoc3 // IntLoc1
        IntLoc2 = 7 * (IntLoc3 - IntLoc2) - IntLoc1
        IntLoc1 = Proc2(IntLoc1)
    return clock() - start - empty


def Proc1(PtrParIn: Record) -> Record:
    NextRecord = PtrGlb.copy()
    PtrParIn.PtrComp = NextRecord
    PtrParIn.IntComp = 5
    NextRecord.IntComp = PtrParIn.IntComp
    NextRecord.PtrComp = PtrParIn.PtrComp
    NextRecord.PtrComp = Proc3(NextRecord.PtrComp)
    if NextRecord.Discr == Ident1:
        NextRecord.IntComp = 6
        NextRecord.EnumComp = Proc6(PtrParIn.EnumComp)
        NextRecord.PtrComp = PtrGlb.PtrComp
        NextRecord.IntComp = Proc7(NextRecord.IntComp, 10)
    else:
        PtrParIn = NextRecord.copy()
    NextRecord.PtrComp = None
    return PtrParIn


def Proc2(IntParIO: int) -> int:
    IntLoc = IntParIO + 10
    EnumLoc = None
    while True:
        if Char1Glob == "A":
            IntLoc = IntLoc - 1
            IntParIO = IntLoc - IntGlob
            EnumLoc = Ident1
        if EnumLoc == Ident1:
            break
    return IntParIO


def Proc3(PtrParOut: Record | None) -> Record | None:
    global IntGlob
    if PtrGlb is not None:
        PtrParOut = PtrGlb.PtrComp
    else:
        IntGlob = 100
    PtrGlb.IntComp = Proc7(10, IntGlob)
    return PtrParOut


def Proc4() -> None:
    global Char2Glob
    BoolLoc = Char1Glob == "A"
    BoolLoc = BoolLoc or BoolGlob
    Char2Glob = "B"


def Proc5() -> None:
    global Char1Glob, BoolGlob
    Char1Glob = "A"
    BoolGlob = False


def Proc6(EnumParIn: int) -> int:
    EnumParOut = EnumParIn
    if not Func3(EnumParIn):
        EnumParOut = Ident4
    if EnumParIn == Ident1:
        EnumParOut = Ident1
    elif EnumParIn == Ident2:
        EnumParOut = Ident1 if IntGlob > 100 else Ident4
    elif EnumParIn == Ident3:
        EnumParOut = Ident2
    elif EnumParIn == Ident4:
        pass
    elif EnumParIn == Ident5:
        EnumParOut = Ident3
    return EnumParOut


def Proc7(IntParI1: int, IntParI2: int) -> int:
    IntLoc = IntParI1 + 2
    IntParOut = IntParI2 + IntLoc
    return IntParOut


def Proc8(Array1Par: list[int], Array2Par: list[list[int]], IntParI1: int, IntParI2: int) -> None:
    global IntGlob
    IntLoc = IntParI1 + 5
    Array1Par[IntLoc] = IntParI2
    Array1Par[IntLoc + 1] = Array1Par[IntLoc]
    Array1Par[IntLoc + 30] = IntLoc
    for IntIndex in range(IntLoc, IntLoc + 2):
        Array2Par[IntLoc][IntIndex] = IntLoc
    Array2Par[IntLoc][IntLoc - 1] = Array2Par[IntLoc][IntLoc - 1] + 1
    Array2Par[IntLoc + 20][IntLoc] = Array1Par[IntLoc]
    IntGlob = 5


def Func1(CharPar1: str, CharPar2: str) -> int:
    CharLoc1 = CharPar1
    CharLoc2 = CharLoc1
    if CharLoc2 != CharPar2:
        return Ident1
    return Ident2


def Func2(StrParI1: str, StrParI2: str) -> bool:
    IntLoc = 1
    CharLoc = "\0"
    while IntLoc <= 1:
        if Func1(StrParI1[IntLoc], StrParI2[IntLoc + 1]) == Ident1:
            CharLoc = "A"
            IntLoc = IntLoc + 1
    if "W" <= CharLoc <= "Z":
        IntLoc = 7
    if CharLoc == "X":
        return True
    if StrParI1 > StrParI2:
        IntLoc = IntLoc + 7
        return True
    return False


def Func3(EnumParIn: int) -> bool:
    EnumLoc = EnumParIn
    return EnumLoc == Ident3


def pystones(loops: int = LOOPS) -> tuple[float, float]:
    """Run Pystone once: ``(seconds, pystones per second)``."""
    if loops < 1:
        raise ValueError("loops must be at least 1")
    _reset()
    seconds = Proc0(loops)
    # An absurdly fast clock reading (seconds <= 0) cannot give a rate.
    rate = loops / seconds if seconds > 0 else float("inf")
    return seconds, rate


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        loops = int(argv[0]) if argv else LOOPS
        if loops < 1:
            raise ValueError
    except ValueError:
        print(f"pystone: LOOPS must be a positive whole number, not {argv[0]!r}", file=sys.stderr)
        return 2
    seconds, rate = pystones(loops)
    print(f"Pystone: {loops} passes in {seconds:.3f} s: {rate:.0f} pystones/second")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
