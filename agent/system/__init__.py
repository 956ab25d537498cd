"""Facts about the host the agent runs on: clock, devices, drivers, users, disk.

Every filesystem path goes through a `HostRoot` (agent.system.host) so tests can point the probes at a
fake tree written in the kernel's real formats. `agent.doctor` turns these facts into the
checks of `edge-agent doctor`.
"""
