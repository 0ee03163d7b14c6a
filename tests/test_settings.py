"""The one settings resolver: precedence, kinds, bounds, and how a bad value reaches the user."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import zc.buildout
from conftest import run_cli

from slapos_collect_recipe import cli, config, settings
from slapos_collect_recipe.recipe import Recipe
from slapos_collect_recipe.settings import Setting, SettingError, from_options, read_ini, resolve

LIMIT = Setting("limit", settings.integer(1, 100), 10, sections=("first", "second"), flag="--limit", metavar="N", help="a limit")
NAMES = Setting("names", settings.words(), sections=("first",), flag="--name", many="replace", metavar="NAME")
ADDED = Setting("added", settings.lines(), sections=("first",), flag="--add", many="add", metavar="ENTRY")
QUIET = Setting("quiet", settings.boolean, False, sections=("first",), flag="--quiet", switch=True)


def parse(*argv: str, declared=(LIMIT, NAMES, ADDED, QUIET)) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser, declared)
    return parser.parse_args(list(argv))


def ini(tmp_path: Path, text: str):
    path = tmp_path / "test.cfg"
    path.write_text(text)
    return read_ini(path)


def test_flag_over_ini_over_node_over_default(tmp_path: Path) -> None:
    cp = ini(tmp_path, "[first]\nlimit = 20\n[second]\nlimit = 30\n")
    node = {"limit": 40}
    got = resolve([LIMIT], parse("--limit", "5"), cp, node)
    assert (got["limit"], got.origins["limit"]) == (5, "--limit")
    got = resolve([LIMIT], parse(), cp, node)
    assert (got["limit"], got.origins["limit"]) == (20, "[first] limit")
    got = resolve([LIMIT], parse(), ini(tmp_path, "[first]\nlimit =   ; blank counts as missing\n[second]\nlimit = 30\n"),
                  node)
    assert (got["limit"], got.origins["limit"]) == (30, "[second] limit")  # the sections in their order
    got = resolve([LIMIT], parse(), ini(tmp_path, "[first]\n"), node)
    assert (got["limit"], got.origins["limit"]) == (40, "slapos.cfg")
    got = resolve([LIMIT], parse(), ini(tmp_path, "[first]\n"), {"limit": None})
    assert (got["limit"], got.given("limit")) == (10, False)
    # A namespace without the attribute (a command without that flag, or a caller's own): the file decides.
    assert resolve([LIMIT], argparse.Namespace(), cp)["limit"] == 20


def test_lists_add_or_replace_and_switches(tmp_path: Path) -> None:
    cp = ini(tmp_path, "[first]\nnames = a b\nadded =\n  x = 1\n  y = 2\nquiet = yes\n")
    got = resolve([NAMES, ADDED, QUIET], parse(), cp)
    assert got["names"] == ["a", "b"] and got["added"] == ["x = 1", "y = 2"] and got["quiet"] is True
    got = resolve([NAMES, ADDED], parse("--name", "c", "--add", "z=3"), cp)
    assert got["names"] == ["c"]  # replaces the file's
    assert got["added"] == ["x = 1", "y = 2", "z=3"]  # joins the file's, after them
    got = resolve([NAMES, ADDED, QUIET], parse("--add", "z=3"), ini(tmp_path, "[first]\n"))
    assert got["names"] == [] and got["added"] == ["z=3"] and got["quiet"] is False
    assert resolve([QUIET], parse("--quiet"), ini(tmp_path, "[first]\nquiet = no\n"))["quiet"] is True


def test_collect_settings_precedence_on_real_files(tmp_path: Path) -> None:
    """keep-days: --keep-days over [slapos-collect] keep-days over slapos.cfg's collect_cache over 3;
    addresses add, users replace."""
    root = tmp_path / "node"
    (root / "var").mkdir(parents=True)
    slapos_cfg = tmp_path / "slapos.cfg"
    slapos_cfg.write_text(f"[slapos]\ninstance_root = {root}\ncollect_cache = 7\n[slapformat]\npartition_amount = 0\n")
    collect_cfg = tmp_path / "collect.cfg"

    def keep_days(*argv: str, file: str = "") -> int:
        collect_cfg.write_text(f"[slapos-collect]\nslapos-cfg = {slapos_cfg}\n{file}")
        parser, _ = cli.build_parser(["rotate"])
        return config.collect_settings(parser.parse_args(["rotate", "-c", str(collect_cfg), *argv])).keep_days

    assert keep_days("--keep-days", "9", file="keep-days = 5\n") == 9
    assert keep_days(file="keep-days = 5\n") == 5
    assert keep_days() == 7
    slapos_cfg.write_text(f"[slapos]\ninstance_root = {root}\n[slapformat]\npartition_amount = 0\n")
    assert keep_days() == config.DEFAULT_KEEP_DAYS

    import os
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    collect_cfg.write_text(f"[slapos-collect]\ndata-dir = {tmp_path / 'd'}\nusers = nobody-such-user\n"
                           f"addresses =\n  {me} = 10.0.0.1\n")
    parser, _ = cli.build_parser(["collect"])
    args = parser.parse_args(["collect", "-c", str(collect_cfg), "--user", me, "--address", f"{me}=10.0.0.2"])
    got = config.collect_settings(args)
    assert [p.label for p in got.partitions] == [me]  # the file's unknown user is replaced, never looked up
    assert got.addresses == {me: ["10.0.0.1", "10.0.0.2"]}


@pytest.mark.parametrize("kind, raw, message", [
    (settings.integer(1), "soon", "must be a whole number, not 'soon'"),
    (settings.integer(1), "0", "must be at least 1, not 0"),
    (settings.integer(None, 9), "10", "must be at most 9, not 10"),
    (settings.integer(0, 59, unit="minutes"), "60", "must be between 0 and 59 minutes, not 60"),
    (settings.integer(0, 59, unit="minutes"), "x", "must be a whole number of minutes, not 'x'"),
    (settings.integer(120, 999, unit="seconds", low_reason="minute resolution"), "60",
     "must be at least 120 seconds (minute resolution), not 60"),
    (settings.integer(120, 999, unit="seconds", low_reason="minute resolution"), "1000",
     "must be between 120 and 999 seconds, not 1000"),
    (settings.integer(1000, 5000, high_reason="the cap"), "6000", "must be at most 5000 (the cap), not 6000"),
    (settings.number(0.0, 1.0), "most", "must be a number, not 'most'"),
    (settings.number(0.0, 1.0), "1.5", "must be between 0 and 1, not 1.5"),
    (settings.number(0.0, 1.0), "nan", "must be between 0 and 1, not nan"),
    (settings.number(1.0, 3600.0, unit="seconds"), "inf", "must be between 1 and 3600 seconds, not inf"),
    (settings.number(above=0.0, unit="seconds"), "0", "must be above 0 seconds, not 0"),
    (settings.number(above=0.0), "inf", "must be a finite number, not inf"),
    (settings.boolean, "maybe", "must be yes or no, not 'maybe'"),
    (settings.choice("a", "b"), "c", "must be a or b, not 'c'"),
    (settings.choice("auto", "yes", "no"), "sometimes", "must be auto, yes or no, not 'sometimes'"),
    (settings.choice("auto", "nftables", "sockets", "no"), "x", "must be one of auto, nftables, sockets or no, not 'x'"),
    (settings.iso_day, "2026-13-01", "must be a day as YYYY-MM-DD, not '2026-13-01'"),
    (settings.iso_day, "20261201", "must be a day as YYYY-MM-DD, not '20261201'"),
    (settings.absolute_path, "bin/x", "must be an absolute path, not 'bin/x'"),
])
def test_each_kind_names_the_bad_value_in_one_line(tmp_path: Path, kind, raw: str, message: str) -> None:
    declared = Setting("key", kind, sections=("s",), flag="--key")
    with pytest.raises(SettingError) as caught:
        resolve([declared], parse(declared=[declared]), ini(tmp_path, f"[s]\nkey = {raw}\n"))
    assert str(caught.value) == f"[s] key {message}"
    with pytest.raises(SettingError) as caught:
        # (argparse refuses a bad choice itself, "invalid choice": here the value reaches the resolver)
        resolve([declared], argparse.Namespace(key=raw))
    assert str(caught.value) == f"--key {message}"
    with pytest.raises(SettingError) as caught:
        from_options(declared, {"key": raw})
    assert str(caught.value) == f"option key {message}"


def test_good_values_of_each_kind() -> None:
    assert settings.integer(0, 5)(" 5 ") == 5 and settings.number(above=0.0)("0.5") == 0.5
    assert settings.boolean("On") is True and settings.boolean("off") is False
    assert settings.choice("auto", "yes", "no", fold_case=True)("YES") == "yes"
    with pytest.raises(ValueError):
        settings.choice("auto", "yes", "no")("YES")
    assert settings.iso_day("1970-01-02") == 1
    assert settings.words(settings.ip_address)("10.0.0.1 ::1") == ["10.0.0.1", "::1"]
    with pytest.raises(ValueError, match="not an IP address"):  # a zone cannot be in the monitor URL
        settings.ip_address("fe80::1%eth0")
    assert settings.lines(settings.label_and_path("LABEL=/path"))("\n a = /x \n\n") == ["a = /x"]


def test_a_bad_entry_of_a_list_is_named() -> None:
    declared = Setting("ipv4", settings.words(settings.ip_address))
    with pytest.raises(SettingError, match=r"^option ipv4: '300\.1\.1\.1' is not an IP address$"):
        from_options(declared, {"ipv4": "10.0.0.1 300.1.1.1"})
    declared = Setting("parts", settings.lines(settings.label_and_path("LABEL=/absolute/path")), sections=("s",))
    with pytest.raises(SettingError, match=r"^\[s\] parts: 'nolabel' must be LABEL=/absolute/path$"):
        resolve([declared], None, read_ini_text("[s]\nparts =\n  a=/x\n  nolabel\n"))


def read_ini_text(text: str):
    import configparser

    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    return cp


def test_required_and_defaults_of_options() -> None:
    declared = Setting("binary", settings.absolute_path, required=True)
    with pytest.raises(SettingError, match="^option binary is required$"):
        from_options(declared, {"binary": "  "})
    assert from_options(Setting("x", settings.integer(0), 3), {}) == 3
    assert from_options(Setting("x", settings.integer(0), 3), {}, default=4) == 4


def test_the_recipe_turns_a_bad_option_into_a_user_error(tmp_path: Path) -> None:
    root = tmp_path / "slappart0"
    root.mkdir()
    options = {"slapos-collect-binary": "/opt/bin/slapos-collect", "partition-root": str(root),
               "ipv4": "127.0.0.1", "memory-cycle": "soon"}
    with pytest.raises(zc.buildout.UserError) as caught:
        Recipe({"buildout": {"directory": str(root)}}, "collect", options)
    assert str(caught.value) == "option memory-cycle must be a whole number of seconds, not 'soon'"
    # The recipe's keys, kinds and defaults are the collector's where they mean the same.
    options["memory-cycle"] = ""
    recipe = Recipe({"buildout": {"directory": str(root)}}, "collect", options)
    assert recipe.memory_cycle == config.DEFAULT_MEMORY_CYCLE and recipe.process_accounting == "auto"


def test_generated_flags_keep_their_names_and_values() -> None:
    parser, _ = cli.build_parser(["serve"])
    args = parser.parse_args(["serve", "--no-tls", "--host", "::1", "--host", "127.0.0.1", "--header-timeout", "2.5"])
    assert args.no_tls is True and args.host == ["::1", "127.0.0.1"] and args.header_timeout == "2.5"
    parser, _ = cli.build_parser(["bench"])
    args = parser.parse_args(["bench", "cpu", "--peer-insecure", "--json"])
    assert args.peer_verify is False and args.as_json is True
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "cpu", "--secret", "x"])  # serve's flag, not bench's


def test_a_bad_flag_value_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    for argv, message in ((["serve", "--port", "http"], "slapos-collect serve: error: --port must be a whole number, "
                                                       "not 'http'\n"),
                          (["collect", "--data-dir", str(tmp_path), "--memory-cycle", "-1"],
                           "slapos-collect collect: error: --memory-cycle must be between 0 and 86400 seconds, "
                           "not -1\n")):
        proc = run_cli(*argv)
        assert proc.returncode == 2 and proc.stderr == message, proc.stderr
    cfg = tmp_path / "c.cfg"
    cfg.write_text(f"[slapos-collect]\ndata-dir = {tmp_path}\nreport-disk-usage = perhaps\n")
    proc = run_cli("collect", "-c", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr == ("slapos-collect collect: error: [slapos-collect] report-disk-usage must be yes or no, "
                           "not 'perhaps'\n")
    assert not (tmp_path / "collector.db").exists()  # refused before anything is written


def test_the_settings_module_imports_nothing_heavy() -> None:
    """Buildout imports it (through recipe.py), collect every minute: standard library only, and errors.py."""
    code = "import sys, slapos_collect_recipe.settings; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                check=True).stdout.split())
    ours = {name for name in loaded if name.startswith("slapos_collect_recipe")}
    assert ours == {"slapos_collect_recipe", "slapos_collect_recipe.errors", "slapos_collect_recipe.settings"}
    assert not loaded & {"psutil", "aiohttp", "sqlite3", "zc.buildout"}
