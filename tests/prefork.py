"""A prefork server's memory, as Apache, PHP-FPM, gunicorn or Zope have it (a program, not a test).

``python3 prefork.py MB WORKERS [wait]``: with ``wait``, first waits for a line on stdin (so that
the caller can move it into a cgroup); then writes MB megabytes of private memory, forks WORKERS
idle workers that share those pages, prints every pid on one line and idles until killed.
Run by tests/test_memory.py and benchmarks/bench_memory.py with the text passed by ``-c``
(the checkout may be unreadable to the user that runs it).
"""

import mmap
import os
import signal
import sys

mb, workers = int(sys.argv[1]), int(sys.argv[2])
if sys.argv[3:] == ["wait"]:
    sys.stdin.readline()
size = mb << 20
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for offset in range(0, size, 4096):
    buf[offset] = 1
pids = [os.getpid()]
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        while True:
            signal.pause()
    pids.append(pid)
print(*pids, flush=True)
while True:
    signal.pause()
