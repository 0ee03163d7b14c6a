"""The buildout recipes, driven directly on real folders (no buildout run here).

tests/test_buildout.py runs them through the real buildout.
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import zc.buildout

from slapos_collect_recipe import recipe
from slapos_collect_recipe.recipe import Recipe, Release

ROOT = Path(__file__).resolve().parent.parent


def make(root: Path, **extra: str) -> tuple[Recipe, dict]:
    options = {
        "slapos-collect-binary": "/opt/sr/bin/slapos-collect",
        "partition-root": str(root),
        "partition-reference": root.name,
        "computer-id": "COMP-1",
        "ipv6": "::1",
        "ipv4": "127.0.0.1",
        **extra,
    }
    buildout = {"buildout": {"directory": str(root)}}
    return Recipe(buildout, "slapos-collect", options), options


@pytest.fixture
def part(tmp_path: Path) -> Path:
    root = tmp_path / "slappart3"
    root.mkdir()
    return root


@pytest.mark.parametrize("extra, message", [
    ({"frequency": "0"}, "frequency must be between 1 and 59"),
    ({"frequency": "often"}, "frequency must be a whole number"),
    ({"keep-days": "-1"}, "keep-days must be between"),
    ({"memory-cycle": "90000"}, "memory-cycle must be between"),
    ({"port": "http"}, "port must be a whole number"),
    ({"port": "70000"}, "port must be between 1 and 65535"),
    ({"bench": "maybe"}, "bench must be yes or no"),
    ({"collect": "everything"}, "collect must be partition or node"),
    ({"collect-by": "group"}, "collect-by must be auto, user or directory"),
    ({"ipv6": "", "ipv4": ""}, "slapmonitor needs an address"),
    ({"ipv4": "300.1.1.1"}, "'300.1.1.1' is not an IP address"),
    ({"slapos-collect-binary": "bin/slapos-collect"}, "must be an absolute path"),
    ({"slapos-collect-binary": ""}, "slapos-collect-binary is required"),
    ({"partitions": "justalabel"}, "must be LABEL=/absolute/path"),
    ({"collect": "node", "slapos-cfg": "slapos.cfg"}, "slapos-cfg must be an absolute path"),
    ({"partition-reference": "a b"}, "partition-reference"),
    ({"cgroups": "slappart0 = relative/dir"}, "must be LABEL = /absolute/path"),
    ({"cgroup": "sys/fs/cgroup"}, "cgroup must be an absolute path"),
    ({"cgroup": "/sys/fs/cgroup/x", "collect": "node"}, "cgroup names the cgroup of this partition alone"),
    ({"process-accounting": "sometimes"}, "process-accounting must be auto, yes or no"),
])
def test_bad_options_are_refused_in_init(part: Path, extra: dict, message: str) -> None:
    with pytest.raises(zc.buildout.UserError, match=message):
        make(part, **extra)
    assert not (part / "etc").exists()  # nothing written


def test_install_writes_every_file(part: Path) -> None:
    rec, options = make(part, frequency="5", **{"keep-days": "9", "memory-cycle": "120"})
    created = rec.install()
    etc = part / "etc"
    expected = {
        etc / "slapos-collect.cfg", etc / "cron.d" / "slapos-collect", etc / "cron.d" / "logrotate",
        etc / "logrotate.conf", etc / "service" / "slapmonitor", etc / "service" / "crond",
    }
    assert {Path(p) for p in created} == expected
    for path in expected:
        assert path.is_file()
    # The secret, the port and the data are not handed to buildout to delete.
    assert str(etc / "slapmonitor.secret") not in created
    assert not any("srv" in p for p in created)

    secret_file = etc / "slapmonitor.secret"
    secret = secret_file.read_text().strip()
    assert len(secret) >= 43  # 32 random bytes
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    data_dir = Path(options["data-dir"])
    assert data_dir == part / "srv" / "collect" and data_dir.is_dir()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o750
    assert options["collector-db"] == str(data_dir / "collector.db")
    for service in ("slapmonitor", "crond"):
        assert os.access(etc / "service" / service, os.X_OK)

    port = int(options["port"])
    assert options["monitor-base-url"] == f"https://[::1]:{port}/"
    assert options["monitor-url"] == f"https://[::1]:{port}/{secret}/server-log/"
    assert options["monitor-dashboard-url"] == f"https://[::1]:{port}/{secret}/"
    assert options["monitor-metrics-url"] == f"https://[::1]:{port}/{secret}/metrics"

    cron = (etc / "cron.d" / "slapos-collect").read_text().split()
    assert cron[:5] == ["*/5", "*", "*", "*", "*"]
    assert cron[5:] == ["/opt/sr/bin/slapos-collect", "collect", "-c", str(etc / "slapos-collect.cfg")]
    assert "-s " + str(part / "var" / "logrotate.status") in (etc / "cron.d" / "logrotate").read_text()
    assert not (etc / "cron.d" / "slapos-collect-bench").exists()
    crond = (etc / "service" / "crond").read_text()
    assert f"/opt/sr/bin/slapos-collect cron --cron-d {etc / 'cron.d'}" in crond

    import configparser
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(etc / "slapos-collect.cfg")
    assert cp["slapos-collect"]["data-dir"] == str(data_dir)
    assert cp["slapos-collect"]["keep-days"] == "9"
    assert cp["slapos-collect"]["memory-cycle"] == "120"
    assert cp["slapos-collect"]["computer-id"] == "COMP-1"
    assert cp["slapos-collect"]["network-accounting"] == "auto"
    assert cp["monitor"]["host"] == "::1 127.0.0.1"
    assert cp["monitor"]["port"] == str(port)
    assert cp["monitor"]["secret-file"] == str(secret_file)
    assert cp["monitor"]["cert"] == str(etc / "ssl" / "slapmonitor.crt")
    # No temp file is left behind by the atomic writes.
    assert not list(part.rglob("*.tmp"))


def test_update_keeps_secret_port_and_data(part: Path) -> None:
    rec, options = make(part)
    rec.install()
    db = Path(options["collector-db"])
    db.write_bytes(b"data")
    first = dict(options)
    for _ in range(2):
        rec, options = make(part)
        rec.update()
    assert options["monitor-url"] == first["monitor-url"]
    assert options["port"] == first["port"]
    assert db.read_bytes() == b"data"
    # A changed parameter reinstalls the part: the secret still survives.
    rec, options = make(part, **{"keep-days": "10"})
    rec.install()
    assert options["monitor-url"] == first["monitor-url"]


def test_partitions_sharing_addresses_get_distinct_ports(tmp_path: Path) -> None:
    ports = []
    for n in range(3):
        root = tmp_path / f"slappart{n}"
        root.mkdir()
        rec, options = make(root, **{"port-base": "20500"})
        rec.install()
        ports.append(int(options["port"]))
    assert len(set(ports)) == 3
    assert ports[0] == 20500 or not recipe.port_is_free(20500, ["::1", "127.0.0.1"])


def test_port_kept_by_a_sibling_partition_is_skipped(tmp_path: Path) -> None:
    """A sibling chose a port but its slapmonitor does not listen yet: not taken twice."""
    sibling = tmp_path / "slappart7" / "etc"
    sibling.mkdir(parents=True)
    (sibling / "slapmonitor.port").write_text("20801\n")
    root = tmp_path / "slappart1"
    root.mkdir()
    _, options = make(root, **{"port-base": "20800"})  # prefers 20801
    assert options["port"] != "20801"


def test_busy_preferred_port_is_skipped(part: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        busy = sock.getsockname()[1]
        sock.listen()
        base = busy - 3  # slappart3 prefers base + 3
        rec, options = make(part, **{"port-base": str(base)})
        assert int(options["port"]) != busy


def test_requested_port_is_used_and_not_kept(part: Path) -> None:
    rec, options = make(part, port="12345")
    rec.install()
    assert options["port"] == "12345"
    assert not (part / "etc" / "slapmonitor.port").exists()


def test_bench_entry_follows_the_option(part: Path) -> None:
    rec, _ = make(part, bench="true")
    rec.install()
    entry = part / "etc" / "cron.d" / "slapos-collect-bench"
    fields = entry.read_text().split()
    from slapos_collect_recipe.schedule import bench_minute

    assert int(fields[0]) == bench_minute("COMP-1", part.name) and fields[1:5] == ["*"] * 4
    assert fields[5:7] == ["/opt/sr/bin/slapos-collect", "bench"] and fields[-1] == "all"
    rec, _ = make(part, bench="false")
    rec.install()
    assert not entry.exists()


def test_dcron_binary_replaces_the_builtin_daemon(part: Path) -> None:
    rec, _ = make(part, **{"dcron-binary": "/opt/dcron/bin/crond"})
    rec.install()
    text = (part / "etc" / "service" / "crond").read_text()
    assert "exec /opt/dcron/bin/crond -s " + str(part / "etc" / "cron.d") in text


def test_collect_defaults_by_user_or_by_directory(tmp_path: Path) -> None:
    import configparser
    import pwd

    root = tmp_path / "slappart0"
    root.mkdir()
    for by, users, partitions in [
        ("user", pwd.getpwuid(os.getuid()).pw_name, ""),
        ("directory", "", f"slappart0={root}"),
        # The parent folder is ours: a test node, users are shared.
        ("auto", "", f"slappart0={root}"),
    ]:
        rec, _ = make(root, **{"collect-by": by})
        rec.install()
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(root / "etc" / "slapos-collect.cfg")
        assert cp["slapos-collect"]["users"] == users
        assert cp["slapos-collect"]["partitions"].strip() == partitions
    rec, _ = make(root, collect="node", **{"slapos-cfg": "/etc/opt/slapos/slapos.cfg"})
    rec.install()
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(root / "etc" / "slapos-collect.cfg")
    assert cp["slapos-collect"]["slapos-cfg"] == "/etc/opt/slapos/slapos.cfg"
    assert cp["slapos-collect"]["partitions"].strip() == ""


def test_own_addresses_for_the_network_figures(part: Path) -> None:
    """The partition's ipv4/ipv6 and the network-addresses parameter, under its label in its config."""
    import configparser
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    rec, _ = make(part, users=me, **{"network-addresses": "10.0.0.9 ::1", "network-accounting": "sockets"})
    rec.install()
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(part / "etc" / "slapos-collect.cfg")
    assert cp["slapos-collect"]["addresses"].strip() == f"{me} = 127.0.0.1 ::1 10.0.0.9"
    assert cp["slapos-collect"]["network-accounting"] == "sockets"
    for extra, message in (({"network-addresses": "10.0.0.300"}, "not an IP address"),
                           ({"network-accounting": "maybe"}, "network-accounting must be")):
        with pytest.raises(zc.buildout.UserError, match=message):
            make(part, **extra)


def test_cgroups_and_accounting_reach_the_config(tmp_path: Path) -> None:
    """The recipe only writes them: whether a path is a cgroup is checked by each run."""
    import configparser

    from slapos_collect_recipe import config

    root = tmp_path / "slappart0"
    root.mkdir()
    rec, _ = make(root, **{"collect-by": "directory", "cgroup": "/sys/fs/cgroup/unified/slappart0",
                           "process-accounting": "no"})
    rec.install()
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(root / "etc" / "slapos-collect.cfg")
    assert cp["slapos-collect"]["cgroups"].strip() == "slappart0 = /sys/fs/cgroup/unified/slappart0"
    assert cp["slapos-collect"]["process-accounting"] == "no"
    args = argparse.Namespace(config=str(root / "etc" / "slapos-collect.cfg"), data_dir=str(tmp_path / "d"))
    settings = config.collect_settings(args)
    assert settings.cgroups == {"slappart0": "/sys/fs/cgroup/unified/slappart0"}
    assert settings.process_accounting == "no"
    rec, _ = make(root, collect="node", cgroups="slapuser0 = /sys/fs/cgroup/a\nslapuser1 = /sys/fs/cgroup/b")
    rec.install()
    cp.read(root / "etc" / "slapos-collect.cfg")
    assert cp["slapos-collect"]["cgroups"].split("\n")[1:] == ["slapuser0 = /sys/fs/cgroup/a",
                                                               "slapuser1 = /sys/fs/cgroup/b"]
    assert cp["slapos-collect"]["process-accounting"] == "auto"


def test_ipv4_only_base_url(part: Path) -> None:
    _, options = make(part, ipv6="", port="9999")
    assert options["monitor-base-url"] == "https://127.0.0.1:9999/"


def test_release_points_at_the_templates() -> None:
    options: dict = {"logrotate-binary": "/usr/sbin/logrotate"}
    Release({"buildout": {}}, "slapos-collect-release", options)
    templates = Path(options["templates"])
    assert (templates / "instance.cfg.in").is_file()
    assert (templates / "instance-input-schema.json").is_file()
    with pytest.raises(zc.buildout.UserError, match="absolute path"):
        Release({"buildout": {}}, "r", {"dcron-binary": "crond"})


def test_templates_reach_an_installed_wheel(tmp_path: Path) -> None:
    """The templates are symlinks in the checkout: the wheel must carry the files."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("slapos_collect_recipe/templates/")}
        assert archive.read("slapos_collect_recipe/templates/instance.cfg.in").startswith(b"# The instance")
    assert {p.name for p in (ROOT / "templates").iterdir()} <= shipped


def test_software_cfg_pins_agree_with_constraints() -> None:
    """software.cfg's [versions] must name what constraints.txt installs, or buildout would fetch."""
    import configparser

    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name.strip())] = version.strip()
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT / "software.cfg")
    versions = dict(cp["versions"])
    assert versions
    for name, version in versions.items():
        if norm(name) == "slapos-collect-recipe":
            from slapos_collect_recipe import __version__
            assert version == __version__
        else:
            assert pins.get(norm(name)) == version, name


def test_the_recipe_never_imports_the_sampling_code() -> None:
    code = ("import sys, slapos_collect_recipe.recipe, slapos_collect_recipe.slapconfiguration; "
            "bad = [m for m in ('psutil', 'slapos_collect_recipe.collect', 'slapos_collect_recipe.sample') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
