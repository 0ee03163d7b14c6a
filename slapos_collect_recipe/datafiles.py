"""The name of every file of the data dir: the README's "Published files" as code.

Other tools read these files by name (dygraph, the SlapOS monitor, ``slapos
node report``), so the names are a contract. They are written here once and
every module takes them from here. This module imports nothing, so anything may
import it cheaply, the buildout recipe included (it never imports the sampling
code).

Names starting with ``.`` are never listed nor served by the slapmonitor.
"""

# -- the store (store.py) -------------------------------------------------------

DB_NAME = "collector.db"
# SQLite's side files of a WAL database; node mode makes them readable like the
# database, and they stay on disk between runs.
WAL_SUFFIXES = ("-wal", "-shm")
# Live SQLite side files, never listed nor served (the database is served as a copy).
DB_SIDE_FILES = frozenset(DB_NAME + suffix for suffix in (*WAL_SUFFIXES, "-journal"))
# A file that is not a database is kept aside as ``collector.db.corrupt-<UTC stamp>``
# (its side files alike, with their suffix after the stamp).
CORRUPT_INFIX = ".corrupt-"
# The slapmonitor's consistent copies of the database while it sends one
# (``.collector.db.serve-<random>``), removed when a killed server left them.
DB_COPY_PREFIX = f".{DB_NAME}.serve-"


def corrupt_name(name: str, stamp: str) -> str:
    """``<name>.corrupt-<stamp>``: where a file that is not a database is kept aside."""
    return f"{name}{CORRUPT_INFIX}{stamp}"


# -- run locks (lock.py, folder.py) -------------------------------------------------

# collect, rotate and bench: one at a time.
COLLECT_LOCK = ".collect.lock"
# The background folder walk: walks never overlap.
FOLDER_LOCK = ".folder.lock"

# -- today's CSVs (realtime.py): ``<stem>.csv``, header ``time,entry`` ---------------

CSV_SUFFIX = ".csv"
# ``system_<figure>.csv``: one per figure of the system table.
SYSTEM_CSV_STEMS = (
    "system_loadavg", "system_cpu_percent", "system_memory_used", "system_memory_free",
    "system_net_in_bytes", "system_net_in_errors", "system_net_in_dropped",
    "system_net_out_bytes", "system_net_out_errors", "system_net_out_dropped",
)
# ``system_disk_memory_{used,free}_<device with / as _>.csv``
DISK_PREFIX = "system_disk_memory_"
# ``partition_<figure>_<encoded label>.csv``, one per figure below.
PARTITION_PREFIX = "partition_"
PARTITION_CSV_FIGURES = ("cpu_percent", "memory_used", "io_bytes", "net_in_bytes", "net_out_bytes")
# ``temperature_<sensor id, made safe>.csv``
TEMPERATURE_PREFIX = "temperature_"
# ``benchmark_<figure>.csv`` (bench.py: the whole history, not only today's)
BENCHMARK_PREFIX = "benchmark_"


def csv_name(stem: str) -> str:
    return stem + CSV_SUFFIX


def disk_file_stem(kind: str, device: str) -> str:
    """``system_disk_memory_{used,free}_<device with / as _>`` (the original's names)."""
    return f"{DISK_PREFIX}{kind}_{device.replace('/', '_')}"


def partition_stem(figure: str, encoded_label: str) -> str:
    """``partition_<figure>_<label>``, the label already made a file name part
    (``realtime.label_part``)."""
    return f"{PARTITION_PREFIX}{figure}_{encoded_label}"


# -- past days (rotate.py, archive.py) ---------------------------------------------------

# A day folder is the day itself (``YYYY-MM-DD``), holding ``dump_<table>.csv``
# while the day is dumped; removed once its archive is durable.
DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
DUMP_PREFIX = "dump_"
ARCHIVE_SUFFIX = ".tar.gz"
# The archive being built is ``.<archive>.tmp`` (hard-linked to its name when complete).
ARCHIVE_TMP_SUFFIX = ARCHIVE_SUFFIX + ".tmp"
# The compressed slices of the file being archived wait here for its tar header.
SPOOL = ".rotate.spool"
# The part of a big table dumped by the helper process: ``.rotate.part-<pid>.{csv,gz}``.
PART_PREFIX = ".rotate.part-"


def dump_name(table: str) -> str:
    """``dump_<table>.csv``, in the day folder and in its archive."""
    return f"{DUMP_PREFIX}{table}{CSV_SUFFIX}"


def archive_name(day: str, late: int = 0) -> str:
    """``<day>.tar.gz``, or ``<day>.late-<late>.tar.gz`` for rows that came after it."""
    return f"{day}.late-{late}{ARCHIVE_SUFFIX}" if late else f"{day}{ARCHIVE_SUFFIX}"


def archive_tmp_name(archive: str) -> str:
    """``.<archive>.tmp``: the archive while it is built."""
    return f".{archive}.tmp"


def part_names(pid: int) -> tuple[str, str]:
    """The helper's ``.rotate.part-<pid>.csv`` and ``.rotate.part-<pid>.gz``."""
    return f"{PART_PREFIX}{pid}.csv", f"{PART_PREFIX}{pid}.gz"


# -- consumption reports (report.py) -------------------------------------------------------

REPORT_DIR = "consumption-report"
JOURNAL_SUFFIX = ".xml"
# ``<day>.xml.uploaded``: the journal's upload is done (written by the node's tools).
UPLOADED_SUFFIX = ".uploaded"
# ``.<day>.xml.handed`` beside a journal: its hand-over to `slapos node report` is made.
HANDED_SUFFIX = ".handed"


def journal_name(day: str) -> str:
    """``<day>.xml``, in REPORT_DIR (and handed over under that name in node mode)."""
    return f"{day}{JOURNAL_SUFFIX}"


def handed_mark(journal: str) -> str:
    """``.<journal>.handed``, beside the journal."""
    return f".{journal}{HANDED_SUFFIX}"


# -- the SlapOS monitor's files, in each partition's ``<path>/.slapgrid/monitor/`` (report.py) --

MONITOR_DIR = (".slapgrid", "monitor")
MONITOR_PROCESS_DATA = "monitor_resource_process.data.json"
MONITOR_MEMORY_DATA = "monitor_resource_memory.data.json"
MONITOR_IO_DATA = "monitor_resource_io.data.json"
# Ours (the original measures no partition network).
MONITOR_NETWORK_DATA = "monitor_resource_network.data.json"
MONITOR_STATUS = "monitor_resource.status.json"
MONITOR_PROCESS_STATUS = "monitor_process_resource.status.json"

# -- state kept in files ------------------------------------------------------------------

# The latest benchmark verdict (bench.py writes it, /metrics reads it).
BENCH_STATUS = "benchmark_status.json"
# The sqlite benchmark's throwaway database lives in ``.bench-<random>/`` (bench_measure.py),
# removed after the run (or by the next one, when a kill left it).
BENCH_TMP_PREFIX = ".bench-"
# The collector's own process accounting files: ``pacct.<n>`` (pacct.py).
PACCT_PREFIX = "pacct."

# -- the slapmonitor's defaults (server.py) ---------------------------------------------------

SECRET_NAME = ".slapmonitor.secret"
CERT_NAME = ".slapmonitor.crt"
KEY_NAME = ".slapmonitor.key"
