"""gplq_ros: GPLQ-quantized DINOv2 features for onboard drone perception.

Layers (each importable without the ones after it):
``quant`` -> ``gplq`` -> ``model`` -> ``runtime`` -> ``nodes`` / ``tools``.
"""

__version__ = '0.1.0'
