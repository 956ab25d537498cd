"""The fleet dashboard: an MQTT-fed state model, a small stdlib HTTP server pushing it to a page over SSE,
and the terminal twin (`edge-builder fleet status|watch`). Light on purpose: no torch/TensorFlow, so it
starts fast from the builder venv. See docs/DASHBOARD.md.
"""
