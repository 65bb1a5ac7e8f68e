"""The offline tool (torch + timm): DINOv2-S/14 backbone and weights, the quantized model,
GPLQ calibration (stage 1 activations, stage 2 weights), fidelity, ONNX export and the
Python API ``offline.api`` the console scripts call."""
