"""No weight is ever downloaded: every non-loopback connection and DNS lookup is refused while training."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any


def _is_loopback(host: Any) -> bool:
    """Loopback, or the torch.distributed master (MASTER_ADDR) of a multi-node torchrun job."""
    if not isinstance(host, str):
        return False
    if host in ("localhost", "") or host == os.environ.get("MASTER_ADDR"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkBlocked(OSError):
    pass


@contextlib.contextmanager
def no_network(record: list[str] | None = None) -> Iterator[list[str]]:
    """Refuse every non-loopback connection and DNS lookup in this process while active.

    Weights must never be downloaded: this turns any attempt (libreyolo, torch hub, a dataset
    auto-download) into an immediate NetworkBlocked error instead of a silent fetch. Loopback stays open
    for torch.distributed rendezvous. Attempts are appended to `record`.
    """
    attempts: list[str] = record if record is not None else []
    orig_connect = socket.socket.connect
    orig_connect_ex = socket.socket.connect_ex
    orig_getaddrinfo = socket.getaddrinfo

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host = address[0] if isinstance(address, tuple) and address else address
        if not _is_loopback(host):
            attempts.append(f"connect {address!r}")
            raise NetworkBlocked(f"network access blocked during training: connect to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        _check(sock, address)
        return orig_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        _check(sock, address)
        return orig_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and not _is_loopback(h):
            attempts.append(f"resolve {h!r}")
            raise NetworkBlocked(f"network access blocked during training: DNS lookup of {h!r}")
        return orig_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]
    socket.getaddrinfo = getaddrinfo
    old_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TORCH_HOME_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield attempts
    finally:
        socket.socket.connect = orig_connect  # type: ignore[method-assign, assignment]
        socket.socket.connect_ex = orig_connect_ex  # type: ignore[method-assign, assignment]
        socket.getaddrinfo = orig_getaddrinfo
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
