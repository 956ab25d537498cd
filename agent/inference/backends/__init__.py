"""Inference backends behind one interface (agent.inference.backends.base.Backend) and the Engine that
runs a bundle on the best one available, falling back from the Edge TPU to the CPU."""
