"""Pystone: the fixed loop computes what Dhrystone's procedures say, and times it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slapos_collect_recipe import pystone


@pytest.mark.parametrize("loops", [1, 7, 2000])
def test_final_state_follows_the_procedures(loops):
    """Values derived by hand from Proc0..Proc8 and Func1..Func3: any slip in a
    procedure changes at least one of them."""
    pystone.pystones(loops)
    assert pystone.IntGlob == 5  # Proc8 sets it last
    assert pystone.BoolGlob is True  # not Func2("...1'ST...", "...2'ND...")
    assert (pystone.Char1Glob, pystone.Char2Glob) == ("A", "B")  # Proc5, Proc4
    # Proc8 with IntLoc1 = 3 and IntLoc3 = Proc7(2, 3) = 7, so IntLoc = 8.
    assert pystone.Array1Glob[8] == pystone.Array1Glob[9] == 7
    assert pystone.Array1Glob[38] == 8
    assert pystone.Array2Glob[8][8] == pystone.Array2Glob[8][9] == 8
    assert pystone.Array2Glob[28][8] == 7
    assert pystone.Array2Glob[8][7] == loops + 10  # 10 set by Proc0, +1 per loop
    # Proc1 -> Proc3: PtrGlb.IntComp = Proc7(10, 5); the next record gets
    # Proc7(6, 10) and Proc6(Ident3) = Ident2, and loses its pointer.
    assert pystone.PtrGlb.IntComp == 17
    assert pystone.PtrGlb.EnumComp == pystone.Ident3
    assert pystone.PtrGlb.StringComp == "DHRYSTONE PROGRAM, SOME STRING"
    following = pystone.PtrGlb.PtrComp
    assert (following.IntComp, following.EnumComp, following.PtrComp) == (18, pystone.Ident2, None)


def test_runs_start_from_the_same_state():
    pystone.pystones(50)
    pystone.pystones(30)
    assert pystone.Array2Glob[8][7] == 40


def test_functions_on_their_own():
    assert pystone.Func1("A", "C") == pystone.Ident1
    assert pystone.Func1("C", "C") == pystone.Ident2
    assert pystone.Func3(pystone.Ident3) is True
    assert pystone.Func3(pystone.Ident1) is False
    assert pystone.Func2("DHRYSTONE PROGRAM, 2'ND STRING", "DHRYSTONE PROGRAM, 1'ST STRING") is True
    assert pystone.Proc7(2, 3) == 7
    assert [pystone.Proc6(e) for e in (1, 3, 4, 5)] == [1, 2, 4, 3]


def test_rate_is_loops_over_seconds():
    seconds, rate = pystone.pystones(20000)
    assert seconds > 0
    assert rate == pytest.approx(20000 / seconds)
    with pytest.raises(ValueError):
        pystone.pystones(0)


def test_command_line():
    ok = subprocess.run([sys.executable, "-m", "slapos_collect_recipe.pystone", "3000"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("Pystone: 3000 passes in ")
    assert ok.stdout.rstrip().endswith("pystones/second")
    bad = subprocess.run([sys.executable, "-m", "slapos_collect_recipe.pystone", "many"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "LOOPS must be a positive whole number" in bad.stderr
