"""DeFakerOne-Edge: DeFakerOne (InternVL2 + SAM2) distilled, quantized and packaged for devices.

Stages are subpackages (data, teacher, student, distill, calibration, quantize, export,
runtime, bench); each reads an artifact directory and writes one. `defaker_edge.runtime`
is the only part a device needs, and it never imports torch.
"""

__version__ = "0.1.0"
