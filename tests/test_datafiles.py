"""datafiles.py names every file of the data dir: what the README says, and nothing imported."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from slapos_collect_recipe import datafiles, realtime
from slapos_collect_recipe.datafiles import (
    ARCHIVE_SUFFIX,
    MONITOR_DIR,
    PARTITION_PREFIX,
    REPORT_DIR,
    UPLOADED_SUFFIX,
    archive_name,
    csv_name,
    disk_file_stem,
    dump_name,
    journal_name,
    partition_stem,
)

README = (ROOT / "README.md").read_text()


def test_it_imports_nothing() -> None:
    """Not even the standard library: the buildout recipe and every command may take it."""
    tree = ast.parse(Path(datafiles.__file__).read_text())
    imports = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports == []
    code = ("import sys\nbefore = set(sys.modules)\nimport slapos_collect_recipe.datafiles\n"
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['slapos_collect_recipe', 'slapos_collect_recipe.datafiles']"


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.index("\n## ", start + 1)]


def _expanded(name: str) -> list[str]:
    """``a_{b,c}_{d,e}`` as its four names."""
    parts = re.split(r"\{([^}]*)\}", name)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def named_by_datafiles() -> set[str]:
    """Every name datafiles gives, placeholders as the README writes them."""
    names = {csv_name(stem) for stem in datafiles.SYSTEM_CSV_STEMS}
    names |= {csv_name(disk_file_stem(kind, "<dev>")) for kind in ("used", "free")}
    names.add(csv_name(disk_file_stem("used", "/dev/sda1")))
    for label in ("<label>", realtime.label_part("a/b c"), realtime.label_part("été")):
        names |= {csv_name(partition_stem(figure, label)) for figure in datafiles.PARTITION_CSV_FIGURES}
    names.add(PARTITION_PREFIX + "*")
    names |= {"<day>/", f"<day>/{dump_name('<table>')}", ARCHIVE_SUFFIX}
    names |= {archive_name("<day>", late) for late in (0, 1, 2)}
    names |= {journal_name("<day>"), f"{REPORT_DIR}/{journal_name('<day>')}", journal_name("<day>") + UPLOADED_SUFFIX}
    names.add("<path>/" + "/".join(MONITOR_DIR) + "/")
    names |= {datafiles.MONITOR_PROCESS_DATA, datafiles.MONITOR_MEMORY_DATA, datafiles.MONITOR_IO_DATA,
              datafiles.MONITOR_NETWORK_DATA, datafiles.MONITOR_STATUS, datafiles.MONITOR_PROCESS_STATUS}
    return names


def test_every_published_file_of_the_readme_is_named_here() -> None:
    """Each file name in the README's "Published files" (placeholders included) comes out of datafiles."""
    quoted = re.findall(r"`([^`\s]+)`", _section("Published files"))
    files = {name for token in quoted for name in _expanded(token)
             if re.search(r"\.(csv|json|xml|tar\.gz|uploaded)$|^<[a-z]+>.*/$|_\*$", name)}
    assert len(files) >= 30, sorted(files)  # the section was read
    assert sorted(files - named_by_datafiles()) == []


def test_the_other_files_the_readme_names_are_named_here() -> None:
    """Locks, side files, marks, temp files, the slapmonitor's secret and pair, bench and accounting files."""
    expected = {
        f"<data-dir>/{datafiles.COLLECT_LOCK}": "<data-dir>/.collect.lock",
        datafiles.corrupt_name(datafiles.DB_NAME, "<UTC stamp>"): "collector.db.corrupt-<UTC stamp>",
        f"{REPORT_DIR}/{datafiles.handed_mark(journal_name('<day>'))}": "consumption-report/.<day>.xml.handed",
        datafiles.archive_tmp_name("<archive>"): ".<archive>.tmp",
        f"DATA_DIR/{datafiles.SECRET_NAME}": "DATA_DIR/.slapmonitor.secret",
        f"DATA_DIR/{datafiles.CERT_NAME}": "DATA_DIR/.slapmonitor.crt",
        datafiles.KEY_NAME: ".slapmonitor.key",
        f"{datafiles.BENCHMARK_PREFIX}<name>{datafiles.CSV_SUFFIX}": "benchmark_<name>.csv",
        f"DATA_DIR/{datafiles.BENCH_STATUS}": "DATA_DIR/benchmark_status.json",
        f"<data-dir>/{datafiles.PACCT_PREFIX}<n>": "<data-dir>/pacct.<n>",
        f"{datafiles.TEMPERATURE_PREFIX}<sensor_id>{datafiles.CSV_SUFFIX}": "temperature_<sensor_id>.csv",
    }
    for ours, readme in expected.items():
        assert ours == readme and f"`{readme}`" in README, readme


def test_the_csvs_written_are_those_named() -> None:
    """realtime's series are the CSVs named here, one figure each."""
    assert sorted(realtime.SYSTEM_SERIES) == sorted(datafiles.SYSTEM_CSV_STEMS)
    assert sorted(realtime.PARTITION_SERIES) == sorted(datafiles.PARTITION_CSV_FIGURES)
    assert realtime.partition_file_stem("cpu_percent", "a/b c") == "partition_cpu_percent_a%2Fb%20c"
    assert disk_file_stem("used", "/dev/sda1") == "system_disk_memory_used__dev_sda1"
    assert re.fullmatch(datafiles.DAY_PATTERN, "2026-03-01") and not re.fullmatch(datafiles.DAY_PATTERN, "2026-3-1")
    assert datafiles.part_names(42) == (".rotate.part-42.csv", ".rotate.part-42.gz")
    assert datafiles.DB_SIDE_FILES == {"collector.db-wal", "collector.db-shm", "collector.db-journal"}
