"""Inference backends behind one interface (base.Backend), each with its own config section, found by
their config `type` in registry.BACKENDS; the Engine (agent.inference.engine) runs a bundle on the preferred
one, falling back from the Edge TPU to the CPU."""
