"""The ``slapconfiguration`` recipe, driven directly (tests/test_slapos_master.py runs it
against a real local master, tests/test_buildout.py through the real buildout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zc.buildout

from slapos_collect_recipe import slapconfiguration
from slapos_collect_recipe.slapconfiguration import SlapConfiguration, validate

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "instance-input-schema.json").read_text())


def test_validate_fills_defaults_and_refuses_bad_values() -> None:
    assert validate(SCHEMA, {}) == {
        "collect": "partition", "slapos-cfg": "/etc/opt/slapos/slapos.cfg", "keep-days": 3,
        "collect-frequency": 1, "benchmarks": False, "process-accounting": "auto", "memory-cycle": 300,
        "network-accounting": "auto", "network-addresses": "",
    }
    # A non-serialised request gives strings.
    got = validate(SCHEMA, {"keep-days": "7", "benchmarks": "true", "monitor-port": "9100"})
    assert got["keep-days"] == 7 and got["benchmarks"] is True and got["monitor-port"] == 9100
    for bad, words in [
        ({"keep-days": 0}, "keep-days"),
        ({"collect-frequency": "often"}, "collect-frequency"),
        ({"collect": "all"}, "collect"),
        ({"keep-day": 3}, "keep-day"),
        ({"monitor-port": 70000}, "monitor-port"),
        ({"network-accounting": "maybe"}, "network-accounting"),
    ]:
        with pytest.raises(ValueError, match=words):
            validate(SCHEMA, bad)


def test_slapconfiguration_without_master(tmp_path: Path) -> None:
    options = {"parameters": json.dumps({"keep-days": 4}), "ipv4": "127.0.0.1", "ipv6": "::1 fe80::1",
               "partition": "slappart2", "jsonschema": str(ROOT / "instance-input-schema.json")}
    SlapConfiguration({"buildout": {"directory": str(tmp_path)}}, "slap-configuration", options)
    assert options["configuration.keep-days"] == "4"
    assert options["configuration.collect-frequency"] == "1"
    assert options["configuration.benchmarks"] == "false"
    assert options["configuration.monitor-port"] == ""
    assert options["ipv6"] == "::1 fe80::1" and options["ipv6-random"] == "::1"
    assert all(isinstance(v, str) for v in options.values())
    bad = dict(options, parameters=json.dumps({"keep-days": "many"}))
    with pytest.raises(zc.buildout.UserError, match="Invalid parameters: keep-days"):
        SlapConfiguration({"buildout": {"directory": str(tmp_path)}}, "slap-configuration", bad)


# What slapos.core's local master (1.25.0) answers to getInstanceParameterDict() for a
# partition requested with {"_": '{"keep-days": 4}'} (json-in-xml).
MASTER_ANSWER = {
    "_": '{"keep-days": 4}', "full_address_list": [], "instance_title": "collect-a",
    "ip_list": [("slappart0", "127.0.0.1"), ("slappart0", "::1")], "root_instance_title": "collect-a",
    "slap_computer_id": "COMP-1", "slap_computer_partition_id": "slappart0",
    "slap_software_release_url": "/srv/software.cfg", "slap_software_type": "default",
    "slave_instance_list": [], "timestamp": "1796167447.92",
}


def test_partition_values_from_a_master_answer() -> None:
    values = slapconfiguration.partition_values(MASTER_ANSWER, "started", "COMP-1-slappart0")
    assert values == {
        "instance-state": "started", "instance-guid": "COMP-1-slappart0",
        "slap-software-type": "default", "slap-computer-partition-id": "slappart0", "slap-computer-id": "COMP-1",
        "slap-software-release-url": "/srv/software.cfg", "slave-instance-list": [], "timestamp": "1796167447.92",
        "instance-title": "collect-a", "root-instance-title": "collect-a", "root-instance-short-title": "UNKNOWN",
        "ipv4": {"127.0.0.1"}, "ipv6": {"::1"}, "configuration": {"keep-days": 4},
    }
    assert "_" in MASTER_ANSWER  # the master's answer is left as it was
    # A request that is not serialised: the parameters are the remaining keys, as strings.
    plain = {key: value for key, value in MASTER_ANSWER.items() if key != "_"}
    plain.update({"keep-days": "7", "benchmarks": "true"})
    assert slapconfiguration.partition_values(plain, "started", "g")["configuration"] == {"keep-days": "7", "benchmarks": "true"}
    with pytest.raises(ValueError, match="the JSON under _ does not parse"):
        slapconfiguration.partition_values(dict(MASTER_ANSWER, _="{oops"), "started", "g")
    # An address with a zone (it cannot be in the monitor URL) or garbage is left out, as the cookbook does.
    odd = dict(MASTER_ANSWER, ip_list=[*MASTER_ANSWER["ip_list"], ("slappart0", "fe80::1%eth0"), ("slappart0", "x")])
    assert slapconfiguration.partition_values(odd, "started", "g")["ipv6"] == {"::1"}


def test_resource_values_flatten_the_partition_resource_file(tmp_path: Path) -> None:
    part = tmp_path / "slappart0"
    (part / "srv").mkdir(parents=True)
    assert slapconfiguration.resource_values(part / "srv") == {}
    # As `slapos node format` writes it (slapos.core 1.25.0), found from a folder below.
    (part / slapconfiguration.RESOURCE_FILE).write_text(json.dumps({
        "address_list": [{"addr": "127.0.0.1", "netmask": "255.255.255.255"}], "external_storage_list": [],
        "ipv6_range": {}, "reference": "slappart0", "tun": None,
        "tap": {"ipv4_addr": "10.0.0.2", "name": "slaptap0"},
        "user": {"name": "slapuser0", "additional_group_list": ["slapsoft"]},
    }))
    assert slapconfiguration.resource_values(part / "srv") == {
        "address-list": [{"addr": "127.0.0.1", "netmask": "255.255.255.255"}], "external-storage-list": [],
        "reference": "slappart0", "tun": None, "tap-ipv4-addr": "10.0.0.2", "tap-name": "slaptap0",
        "user-name": "slapuser0", "user-additional-group-list": ["slapsoft"],
    }
    (part / slapconfiguration.RESOURCE_FILE).write_text("{")
    with pytest.raises(zc.buildout.UserError, match="cannot read the partition's resource file"):
        slapconfiguration.resource_values(part)
