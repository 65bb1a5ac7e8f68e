"""DINOv2 feature extractor and the FP32 reference heads.

Submodules are imported explicitly: ``preprocess``, ``heads`` and ``vocab`` need only
numpy/OpenCV (usable onboard without torch); ``weights``, ``backbone`` and ``pipeline``
need torch + timm.
"""
