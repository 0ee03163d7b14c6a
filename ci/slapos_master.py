"""Drive a local SlapOS master (slapos.core's StandaloneSlapOS) for the tests.

Run by tests/test_slapos_master.py as the ordinary test user, with the venv
made by ci/setup-slapos-master (a master refuses to run as root):

    python slapos_master.py up BASE_DIR MASTER_PORT SOFTWARE_CFG REQUESTS_JSON
    python slapos_master.py instance BASE_DIR MASTER_PORT
    python slapos_master.py request-invalid BASE_DIR MASTER_PORT SOFTWARE_CFG REFERENCE PARAMETERS_JSON
    python slapos_master.py down BASE_DIR MASTER_PORT

``up`` starts the master, formats one partition per request (all on 127.0.0.1
and ::1, one user: as on a test node), supplies the software release, builds
it, requests each instance (``{"reference": {parameters}}``, serialised under
``_``), waits for them and prints on stdout one JSON object: reference ->
{"partition": id, "published": {...}}. ``down`` stops every process it started.
"""

from __future__ import annotations

import json
import os
import sys

from slapos.slap.standalone import SlapOSNodeCommandError, StandaloneSlapOS

BIN = os.path.dirname(sys.executable)


def master(base: str, port: str) -> StandaloneSlapOS:
    return StandaloneSlapOS(base, server_ip="127.0.0.1", server_port=int(port), computer_id="slapos-collect-test",
                            slapos_bin=os.path.join(BIN, "slapos"))


def published(standalone: StandaloneSlapOS, software: str, requests: dict) -> dict:
    result = {}
    for reference, parameters in requests.items():
        partition = standalone.request(software, reference,
                                       partition_parameter_kw={"_": json.dumps(parameters)})
        connection = partition.getConnectionParameterDict()
        raw = connection.get("_")
        result[reference] = {
            "partition": partition.getId(),
            "published": json.loads(raw) if raw else connection,
        }
    return result


def main(argv: list[str]) -> int:
    command, base, port = argv[:3]
    os.environ["PATH"] = BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    standalone = master(base, port)
    if command == "down":
        standalone.stop()
        return 0
    standalone.start()
    if command == "instance":
        # Process the instances again (a changed request, a second run).
        standalone.waitForInstance(max_retry=3)
        return 0
    if command == "request-invalid":
        # An instance with invalid parameters must fail: print what the node says.
        software, reference, parameters = argv[3], argv[4], json.loads(argv[5])
        standalone.request(software, reference, partition_parameter_kw={"_": json.dumps(parameters)})
        try:
            standalone.waitForInstance(max_retry=0, error_lines=60)
        except SlapOSNodeCommandError as exc:
            print(json.dumps({"failed": True, "message": str(exc)}))
        else:
            print(json.dumps({"failed": False, "message": ""}))
        return 0
    software, requests = argv[3], json.loads(argv[4])
    # One partition more, for request-invalid.
    standalone.format(partition_count=len(requests) + 1, ipv4_address="127.0.0.1", ipv6_address="::1")
    standalone.supply(software)
    standalone.waitForSoftware(max_retry=1)
    for reference, parameters in requests.items():
        standalone.request(software, reference, partition_parameter_kw={"_": json.dumps(parameters)})
    # The first run publishes; a second one sees the published values settled.
    standalone.waitForInstance(max_retry=3)
    print(json.dumps(published(standalone, software, requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
