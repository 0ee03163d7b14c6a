"""The node's computer XML (``[slapformat] computer_xml`` of slapos.cfg), as ``slapos node format`` writes it.

The file is a marshalled dictionary (``<marshal><dictionary>``, keys and
values alternating as children; ``<string>``, ``<int>``, ``<none/>``,
``<list>``, ``<reference id=.../>`` for an object seen before) whose
``partition_list`` holds, per partition, its ``reference``, ``user``
(``{name}``), ``tap`` and ``tun`` (``{name, ipv4_addr, ...}`` or none) and
``address_list`` (``[{addr, netmask}]``). Only what the collector needs is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree


class ComputerXmlError(ValueError):
    """The file is missing or is not a computer XML: one clear line."""


@dataclass
class XmlPartition:
    reference: str
    user: str | None
    addresses: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)  # tap and tun names


_SCALARS = {"string": str, "unicode": str, "int": int, "long": int, "float": float}


def _value(node: ElementTree.Element, seen: dict[str, object]) -> object:
    tag = node.tag
    if tag in _SCALARS:
        try:
            return _SCALARS[tag](node.text or "")
        except ValueError:
            raise ComputerXmlError(f"<{tag}> holds {node.text!r}") from None
    if tag == "none":
        return None
    if tag in ("true", "false"):
        return tag == "true"
    if tag == "reference":
        return seen.get(node.get("id", ""))
    if tag in ("list", "tuple"):
        items: list[object] = []
        seen[node.get("id", "")] = items
        items.extend(_value(child, seen) for child in node)
        return items
    if tag == "dictionary":
        result: dict[object, object] = {}
        seen[node.get("id", "")] = result
        children = list(node)
        if len(children) % 2:
            raise ComputerXmlError("a <dictionary> has a key without a value")
        for key, value in zip(children[::2], children[1::2], strict=True):
            name = _value(key, seen)
            if isinstance(name, (list, dict)):
                raise ComputerXmlError(f"a <dictionary> key is a <{key.tag}>")
            result[name] = _value(value, seen)
        return result
    raise ComputerXmlError(f"unexpected element <{tag}>")


def read(path: str) -> list[XmlPartition]:
    """The partitions of the computer XML at ``path``."""
    try:
        root = ElementTree.parse(path).getroot()
    except OSError as exc:
        raise ComputerXmlError(f"computer XML {path}: {exc.strerror}") from None
    except ElementTree.ParseError as exc:
        raise ComputerXmlError(f"computer XML {path} is not XML: {exc}") from None
    try:
        if root.tag != "marshal" or len(root) != 1:
            raise ComputerXmlError("the root is not one <marshal> value")
        computer = _value(root[0], {})
        if not isinstance(computer, dict) or not isinstance(computer.get("partition_list"), list):
            raise ComputerXmlError("no partition_list")
        partitions: list[XmlPartition] = []
        for entry in computer["partition_list"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("reference"), str):
                raise ComputerXmlError("a partition without a reference")
            user = entry.get("user")
            part = XmlPartition(reference=entry["reference"],
                                user=user.get("name") if isinstance(user, dict) else None)
            for address in entry.get("address_list") or []:
                if isinstance(address, dict) and isinstance(address.get("addr"), str):
                    part.addresses.append(address["addr"])
            for key in ("tap", "tun"):
                interface = entry.get(key)
                if isinstance(interface, dict) and isinstance(interface.get("name"), str) and interface["name"]:
                    part.interfaces.append(interface["name"])
            partitions.append(part)
    except RecursionError:
        raise ComputerXmlError(f"computer XML {path} is not one slapos node format writes: nested too deep") from None
    except ComputerXmlError as exc:
        raise ComputerXmlError(f"computer XML {path} is not one slapos node format writes: {exc}") from None
    return partitions
