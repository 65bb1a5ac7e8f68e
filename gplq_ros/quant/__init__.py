"""Quantization primitives (qparams, fake-quant, STE, packing).

Filled by the GPLQ calibration issue; nothing here imports torch at package import.
"""
