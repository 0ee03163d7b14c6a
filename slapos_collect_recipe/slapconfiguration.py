"""The ``slapos_collect_recipe:slapconfiguration`` recipe: a partition's parameters as string options.

The parameters come from the master (or, on a test node, from the options),
are validated against the instance JSON schema with its defaults filled in, and
every value is turned into a string option: upstream zc.buildout refuses
slapos.cookbook's sets and dicts ("Option values must be strings"). Why
slapos.cookbook's own ``slapconfiguration.jsonschema`` is not used is said in
``SlapConfiguration``'s docstring.

Like recipe.py, it only writes files and never imports the sampling code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import zc.buildout

from .address import normal_address
from .recipe import TEMPLATES, make_dir


class SlapConfiguration:
    """The partition's parameters and addresses, validated, as string options.

    With ``url`` (the master's), they come from the master through slapos.slap's
    public client API, read as ``slapos.cookbook:slapconfiguration.serialised``
    reads them (same options, the partition's ``.slapos-resource`` included);
    without it (a test node), from the options ``parameters`` (JSON), ``ipv4``,
    ``ipv6`` and ``partition``. Every property of the schema ``jsonschema``
    becomes an option ``configuration.<name>`` (its default, or empty).
    An invalid parameter fails the instance with one readable message, also
    reported to the master.

    Not slapos.cookbook's own ``slapconfiguration.jsonschema`` (1.0.514): under
    upstream zc.buildout its base class fails before validating ("Option values
    must be strings": it sets lists, sets and dicts), it needs a master (no
    test-node path), it turns only ``True``/``False`` into booleans, leaves
    properties without a default unset, and words errors differently
    (``$['keep-days']: ...`` on lines of their own). README.md, "The buildout
    recipes".
    """

    def __init__(self, buildout, name: str, options) -> None:
        self.options = options
        schema_path = options.get("jsonschema", "").strip() or str(TEMPLATES / "instance-input-schema.json")
        try:
            schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise zc.buildout.UserError(f"cannot read the instance schema {schema_path}: {exc}") from None
        partition = None
        values: dict = {}
        if options.get("url", "").strip():
            partition = _master_partition(options)
            try:
                values = partition_values(partition.getInstanceParameterDict(), partition.getState(),
                                          partition.getInstanceGuid())
            except ValueError as exc:
                raise _refusal(partition, name, f"Invalid parameters: {exc}") from None
            instance_root = buildout["buildout"]["directory"]
            values["storage-dict"] = _storage_links(options.get("storage-home", "").strip(), instance_root,
                                                    values.get("slap-computer-partition-id", ""))
            for key, value in resource_values(instance_root).items():
                if key not in values and key not in options:  # the master's word first
                    values[key] = value
        else:
            for key in ("key", "cert", "computer"):  # a test node has no master to reach
                options.get(key, "")
            raw = options.get("parameters", "").strip() or "{}"
            try:
                parameters = json.loads(raw)
            except ValueError as exc:
                raise zc.buildout.UserError(f"option parameters is not JSON: {exc}") from None
            values = {"configuration": parameters, "ipv4": options.get("ipv4", "").split(),
                      "ipv6": options.get("ipv6", "").split(),
                      "slap-computer-partition-id": options.get("partition", "").strip()}
        parameters = values.get("configuration")
        if not isinstance(parameters, dict):
            parameters = {}
        try:
            parameters = validate(schema, parameters)
        except ValueError as exc:
            raise _refusal(partition, name, f"Invalid parameters: {exc}") from None
        values["configuration"] = parameters
        for key, value in values.items():
            if key == "configuration":
                continue
            options[key] = _option_string(value)
        options["configuration"] = json.dumps(parameters, sort_keys=True)
        for key in schema.get("properties", {}):
            options[f"configuration.{key}"] = _option_string(parameters.get(key, ""))
        ipv4, ipv6 = sorted(values.get("ipv4") or []), sorted(values.get("ipv6") or [])
        options["ipv4"], options["ipv6"] = " ".join(ipv4), " ".join(ipv6)
        options["ipv4-random"] = ipv4[0] if ipv4 else ""
        options["ipv6-random"] = ipv6[0] if ipv6 else ""

    def install(self) -> list[str]:
        return []

    update = install


# What the master sends next to the parameters, each published as an option
# (``_`` becoming ``-``), as slapos.cookbook's slapconfiguration does.
_MASTER_KEYS = ("slap_software_type", "slap_computer_partition_id", "slap_computer_id",
                "slap_software_release_url", "slave_instance_list", "timestamp")
_TITLES = (("instance_title", "UNKNOWN Instance"), ("root_instance_title", "UNKNOWN"),
           ("root_instance_short_title", "UNKNOWN"))
# slapos.format.Partition.resource_file: what ``slapos node format`` wrote of the partition.
RESOURCE_FILE = ".slapos-resource"


def _master_partition(options):
    """This partition, from the master (slapos.slap's public client API)."""
    import slapos.slap

    slap = slapos.slap.slap()
    slap.initializeConnection(options["url"].strip(), options.get("key", "").strip() or None,
                              options.get("cert", "").strip() or None)
    return slap.registerComputerPartition(options.get("computer", "").strip(),
                                          options.get("partition", "").strip())


def partition_values(parameter_dict: dict, state: str, guid: str) -> dict:
    """The options of a partition the master describes with ``parameter_dict``.

    ``configuration`` holds the requested parameters: the JSON under ``_``
    (``json-in-xml`` serialisation) or else the remaining keys as they came.
    ``ipv4``/``ipv6`` are sets of the partition's addresses.
    """
    parameters = dict(parameter_dict)
    values: dict = {"instance-state": state}
    for key in _MASTER_KEYS:
        if key in parameters:
            values[key.replace("_", "-")] = parameters.pop(key)
    for key, default in _TITLES:
        values[key.replace("_", "-")] = parameters.pop(key, default)
    values["instance-guid"] = guid
    ipv4, ipv6 = set(), set()
    for _interface, address in parameters.pop("ip_list", None) or []:
        if normal_address(address) is None:  # what slapos.cookbook drops too (a zone, garbage)
            continue
        (ipv6 if ":" in address else ipv4).add(address)
    values["ipv4"], values["ipv6"] = ipv4, ipv6
    for key in ("full_ip_list", "full_address_list"):  # routes: not used here
        parameters.pop(key, None)
    if "_" in parameters:
        try:
            values["configuration"] = json.loads(parameters["_"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the JSON under _ does not parse: {exc}") from None
    else:
        values["configuration"] = parameters
    return values


def resource_values(instance_root: str | os.PathLike) -> dict:
    """The partition's resource file (in ``instance_root`` or a parent) as flat options.

    Nested keys are joined with ``-`` and every ``_`` becomes ``-``:
    ``{"tap": {"ipv4_addr": ...}}`` gives ``tap-ipv4-addr``.
    """
    folder = Path(instance_root).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / RESOURCE_FILE
        if path.is_file():
            break
    else:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise zc.buildout.UserError(f"cannot read the partition's resource file {path}: {exc}") from None
    flat: dict = {}
    pending = [("", data if isinstance(data, dict) else {})]
    while pending:
        prefix, mapping = pending.pop()
        for key, value in mapping.items():
            name = prefix + str(key).replace("_", "-")
            if isinstance(value, dict):
                pending.append((name + "-", value))
            else:
                flat[name] = value
    return flat


def _refusal(partition, name: str, message: str) -> zc.buildout.UserError:
    """The error failing the instance with ``message``, reported to the master when there is one."""
    if partition is not None:
        try:
            partition.error(message, logger=_QuietReport(name))
        except Exception:  # reporting to the master is best effort
            pass
    return zc.buildout.UserError(message)


def _storage_links(storage_home: str, instance_root: str, partition_id: str) -> dict:
    """``DATA/<name>`` links to ``<storage-home>/<name>/<partition>``, for each such folder."""
    links: dict = {}
    if not storage_home or not partition_id or not os.path.isdir(storage_home):
        return links  # (without a partition id, every link would be the whole shared folder)
    for name in sorted(os.listdir(storage_home)):
        target = os.path.join(storage_home, name, partition_id)
        if os.path.isdir(target):
            link = os.path.join(instance_root, "DATA", name)
            make_dir(os.path.dirname(link), 0o700)
            if not os.path.lexists(link):
                os.symlink(target, link)
            links[name] = link
    return links


class _QuietReport:
    """A logger for slap's error(): one line when the master cannot take the report.

    (slap logs a traceback otherwise, e.g. for a master without that endpoint.)
    """

    def __init__(self, name: str) -> None:
        import logging

        self.log = logging.getLogger(name)

    def exception(self, *args: object, **kwargs: object) -> None:
        self.log.warning("the master did not take the error report")

    def __getattr__(self, attr: str):
        return getattr(self.log, attr)


def _option_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (set, frozenset)):
        return " ".join(sorted(str(v) for v in value))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def validate(schema: dict, parameters: dict) -> dict:
    """``parameters`` checked against ``schema``, with its defaults filled in.

    Integers and booleans given as strings (a non-serialised request) are
    turned into numbers and booleans first. Raises ValueError with one line
    per problem.
    """
    import jsonschema

    properties = schema.get("properties", {})
    checked = dict(parameters)
    for key, spec in properties.items():
        value = checked.get(key)
        if isinstance(value, str):
            kind = spec.get("type")
            if kind == "integer" and re.fullmatch(r"\s*-?\d+\s*", value):
                checked[key] = int(value)
            elif kind == "boolean" and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
                checked[key] = value.strip().lower() in ("true", "yes", "1")
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(checked), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path)
            lines.append(f"{where}: {error.message}" if where else error.message)
        raise ValueError("; ".join(lines))
    for key, spec in properties.items():
        if key not in checked and "default" in spec:
            checked[key] = spec["default"]
    return checked
