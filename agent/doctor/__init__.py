"""`edge-agent doctor`: every check that answers "why doesn't it work?", each ok / warn / fail with a fix.

The registry and the runner: agent.doctor.registry; the result and context types the checks share:
agent.doctor.model; the checks: platform, tpu, services, node (and compat, the TPU probe hook).
"""
