"""Drives the released SlapOS readers of a node's collector output, unchanged.

Run by tests/test_clients.py with the venv of ci/setup-clients (slapos.core
1.25.0, slapos.toolbox), as the partition's user or as root; never imports
slapos_collect_recipe. Prints one JSON document on stdout.

    promise NAME PARTITION_DIR WORK_DIR DB          # a slapos.toolbox promise plugin, via slapos.core's launcher
    report DB_DIR DAY COMPUTER_ID USER...           # slapos.core's ConsumptionReport of one day
    validate FILE...                                # slapgrid's own check of each journal (computer_consumption.xsd)
"""

import json
import logging
import os
import sys
import tempfile
import types
import xml.etree.ElementTree as ET


def promise(name, partition_dir, work_dir, db):
    from slapos.grid.promise import PromiseLauncher
    from slapos.grid.promise.generic import PROMISE_LOG_FOLDER_NAME, PROMISE_RESULT_FOLDER_NAME

    plugin_dir = os.path.join(work_dir, "plugin")
    for folder in (plugin_dir, os.path.join(work_dir, "promise"), os.path.join(work_dir, "log"),
                   os.path.join(partition_dir, PROMISE_RESULT_FOLDER_NAME),
                   os.path.join(partition_dir, PROMISE_LOG_FOLDER_NAME)):
        os.makedirs(folder, exist_ok=True)
    with open(os.path.join(plugin_dir, name + ".py"), "w") as handle:
        handle.write(f"from slapos.promise.plugin.{name} import RunPromise\n\n"
                     f"extra_config_dict = {{'collectordb': {db!r}}}\n")
    launcher = PromiseLauncher(config={
        "promise-timeout": 60, "promise-folder": plugin_dir,
        "legacy-promise-folder": os.path.join(work_dir, "promise"), "log-folder": os.path.join(work_dir, "log"),
        "partition-folder": partition_dir, "master-url": "", "partition-cert": "", "partition-key": "",
        "partition-id": "slappart0", "computer-id": "COMP-CLIENTS", "debug": False, "check-anomaly": False,
        "force": True, "run-only-promise-list": [], "uid": None, "gid": None,
    }, logger=None, dry_run=False)
    error = None
    try:
        launcher.run()
    except Exception as exc:  # the launcher raises PromiseError when a promise failed
        error = f"{type(exc).__name__}: {exc}"
    with open(os.path.join(partition_dir, PROMISE_RESULT_FOLDER_NAME, name + ".status.json")) as handle:
        result = json.load(handle)
    log = ""
    for log_path in (os.path.join(work_dir, "log", name + ".log"),
                     os.path.join(partition_dir, PROMISE_LOG_FOLDER_NAME, name + ".log")):
        if os.path.exists(log_path):
            with open(log_path) as handle:
                log += handle.read()
    return {"result": result["result"], "error": error, "log": log}


def report(db_dir, day, computer_id, *users):
    from slapos.collect.db import Database
    from slapos.collect.reporter import ConsumptionReport

    location = tempfile.mkdtemp()
    built = ConsumptionReport(database=Database(db_dir), computer_id=computer_id, location=location,
                              user_list=list(users)).buildXMLReport(day)
    return {"path": built, "movements": movements(built)}


def movements(path):
    found = []
    for movement in ET.parse(path).getroot().iter("movement"):
        found.append({field: movement.findtext(field) for field in ("resource", "reference", "quantity", "title")})
    return found


def validate(*paths):
    from importlib.resources import files

    from slapos.grid.slapgrid import Slapgrid

    xsd = files("slapos.slap").joinpath("doc/computer_consumption.xsd").read_bytes()
    this = types.SimpleNamespace(logger=logging.getLogger("slapgrid"))
    out = {}
    for path in paths:
        with open(path, "rb") as handle:
            out[path] = Slapgrid.validateXML(this, handle.read(), xsd)
    return out


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    print(json.dumps({"promise": promise, "report": report, "validate": validate}[command](*args)))
