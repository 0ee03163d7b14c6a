"""Where a node's collector writes: the layout a fresh node gets, and what stays refused."""

from __future__ import annotations

import stat
from pathlib import Path

from conftest import run_cli


def _node(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "slapos.cfg"
    cfg.write_text(f"[slapos]\ninstance_root = {root}\ncomputer_id = COMP-7\n[slapformat]\npartition_amount = 0\n")
    return cfg


def test_a_fresh_node_gets_its_data_dir_and_report_folder(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    proc = run_cli("collect", "--slapos-cfg", str(_node(tmp_path, root)))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for folder in (root / "var", root / "var" / "data-log", root / "var" / "xml_report",
                   root / "var" / "xml_report" / "COMP-7"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    assert (root / "var" / "data-log" / "collector.db").is_file()


def test_a_missing_instance_root_or_data_dir_parent_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    proc = run_cli("collect", "--slapos-cfg", str(_node(tmp_path, root)))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"parent directory {root} does not exist" in proc.stderr
    assert not root.exists()

    root.mkdir()
    given = tmp_path / "missing" / "data"
    proc = run_cli("collect", "--slapos-cfg", str(_node(tmp_path, root)), "--data-dir", str(given))
    assert proc.returncode == 2 and f"parent directory {given.parent} does not exist" in proc.stderr
    assert not given.parent.exists() and not (root / "var").exists()
