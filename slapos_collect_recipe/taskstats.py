"""The kernel's raw tick-sampled CPU time of a live process (taskstats over generic netlink, root).

Where the kernel counts CPU time by ticks (CONFIG_TICK_CPU_ACCOUNTING), each
tick charges its whole length to the task running at that moment. A process's
accounting record (acct(2)) carries those raw samples, while
``/proc/<pid>/stat`` shows them scaled to the scheduler's precise run time; on
a busy machine the two stray apart by several percent of a process's life.
taskstats gives the raw samples of a live process (``ac_utime + ac_stime``
of a thread-group query, ended threads included), so the part of a record
after the last run that saw the process is taken raw minus raw: only the
ticks of that part, not the stray of its whole life.

Needs CAP_NET_ADMIN (root, as accounting does); anything else: None.
"""

from __future__ import annotations

import os
import socket
import struct

_NETLINK_GENERIC = 16
_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_ID = 1
_CTRL_ATTR_FAMILY_NAME = 2
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_CMD_GET = 1
_ATTR_TGID = 2  # TASKSTATS_CMD_ATTR_TGID
_TYPE_STATS = 3
_TYPE_AGGR = (4, 5)  # TASKSTATS_TYPE_AGGR_PID, TASKSTATS_TYPE_AGGR_TGID
_UTIME_AT = 152  # offsetof(struct taskstats, ac_utime), then ac_stime: microseconds
_HEADER = struct.Struct("=IHHII")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data: bytes):
    at = 0
    while at + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        if size < 4:
            return
        yield kind & 0x3FFF, data[at + 4:at + size]
        at += (size + 3) & ~3


class Taskstats:
    """One netlink socket asking the kernel for processes' raw CPU times."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)
        self._seq = 0
        try:
            self._sock.bind((0, 0))
            reply = self._ask(_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY, _attr(_CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"))
            ids = [value for kind, value in _attrs(reply) if kind == _CTRL_ATTR_FAMILY_ID and len(value) >= 2]
            if not ids:
                raise OSError("no TASKSTATS family")
            self._family = struct.unpack("=H", ids[0][:2])[0]
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _ask(self, family: int, command: int, payload: bytes) -> bytes:
        self._seq += 1
        body = struct.pack("=BBH", command, 1, 0) + payload
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), family, _NLM_F_REQUEST, self._seq, 0) + body)
        while True:
            data = self._sock.recv(65536)
            size, kind, _, seq, _ = _HEADER.unpack_from(data)
            if seq != self._seq:
                continue  # a late answer to an earlier question
            if kind == _NLMSG_ERROR:
                errno = -struct.unpack_from("=i", data, _HEADER.size)[0]
                raise OSError(errno, os.strerror(errno))
            return data[_HEADER.size + 4:size]

    def raw_cpu(self, pid: int) -> float | None:
        """The thread group's raw user + system seconds, or None (gone, not answered).

        A thread-group answer carries no start time to tell a reused pid by:
        the caller asks right after reading the process's /proc, and a pid is
        reused only once the kernel has gone round the whole pid space."""
        try:
            reply = self._ask(self._family, _CMD_GET, _attr(_ATTR_TGID, struct.pack("=I", pid)))
        except OSError:
            return None
        for kind, value in _attrs(reply):
            if kind in _TYPE_AGGR:
                for inner, stats in _attrs(value):
                    if inner == _TYPE_STATS and len(stats) >= _UTIME_AT + 16:
                        utime, stime = struct.unpack_from("=QQ", stats, _UTIME_AT)
                        return (utime + stime) / 1e6
        return None


def open_taskstats() -> Taskstats | None:
    """A ``Taskstats``, or None where the kernel has none or refuses (not root)."""
    try:
        return Taskstats()
    except OSError:
        return None
