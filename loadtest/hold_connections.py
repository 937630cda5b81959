#!/usr/bin/env python3
"""Opens COUNT keep-alive HTTP/1.1 connections to HOST:PORT, sends one GET PATH on each, reads
the whole answer, and then holds every connection open, idle, until stdin closes or the process
is stopped. Prints "holding N" (N = connections that got a 2xx answer) once all are open, so
that a caller can measure the server's resident memory with that many idle clients.

Usage: loadtest/hold_connections.py HOST PORT COUNT [PATH]
"""

import asyncio
import resource
import sys

# Connections opened at once: enough to finish 10,000 in seconds, few enough that the
# listener's accept backlog never overflows (an overflow would look like a slow server).
OPEN_AT_ONCE = 200


async def open_one(host, port, path, gate):
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            return writer if 200 <= status < 300 else None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            return None


async def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < count + 64:
        sys.exit(f"the open-file limit ({hard}) is below {count} connections")
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    writers = await asyncio.gather(*(open_one(host, port, path, gate) for _ in range(count)))
    held = [writer for writer in writers if writer is not None]
    print(f"holding {len(held)}", flush=True)
    # Hold them until the caller closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
