"""Free loopback ports for test processes, one picker for the whole suite."""

from __future__ import annotations

import socket
import threading

_HANDED_OUT: set[int] = set()
_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """A port that is free on `host` for TCP (and UDP when ``udp_too``).

    Never the same port twice in one process: the kernel may give a just-closed port to the next bind to
    port 0, so two listeners picked one after the other (an admin port and a service's) could collide.
    """
    with _LOCK:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind((host, 0))
                port = int(tcp.getsockname()[1])
                if port in _HANDED_OUT:
                    continue
                if udp_too:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        try:
                            udp.bind((host, port))
                        except OSError:
                            continue
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError(f"no free port found on {host} after 200 tries")
