"""edge-agent: the device side of the fleet toolkit (runs on a 2 GB Raspberry Pi).

Nothing under this package may import torch, TensorFlow or onnx.
"""

__version__ = "0.1.0"
