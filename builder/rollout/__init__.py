"""Staged fleet rollouts (issue 12): announce a bundle to the fleet wave by wave, per node, gated on health.

waves    SPEC -> waves of node ids (pure)
gates    health of a node before/after, wave verdicts (pure)
state    the persisted rollout record and its transitions (pure)
store    the record on disk and the single-runner claim
link     the MQTT side: node states, updates, telemetry, commands
announce per-node signed announcements
engine   RolloutEngine: one object that runs a rollout (the CLI and the dashboard own one)
"""
