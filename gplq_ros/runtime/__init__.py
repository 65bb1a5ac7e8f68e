"""Onboard runtime: artifact format, ONNX export, ONNX Runtime engine (runtime issue)."""
