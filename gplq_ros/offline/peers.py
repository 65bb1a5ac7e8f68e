"""The graphs a user would pick instead of GPLQ, made from our FP32 export: ONNX Runtime
dynamic int8 (``quantize_dynamic``, no calibration) and static int8 QDQ (``quantize_static``,
MinMax, per-channel weights, on crops of the calibration images)."""
from pathlib import Path
from typing import List, Tuple

import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

from gplq_ros.offline.data import make_crops
from gplq_ros.offline.onnx_export import export_onnx
from gplq_ros.onboard.pipeline import PipelineConfig


class _Reader:
    """onnxruntime CalibrationDataReader over prepared real crops."""

    def __init__(self, tensors):
        self.it = iter([{'pixels': t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


def peer_graphs(extractor, workdir: Path, size: int, calibration_images: List[np.ndarray],
                static_crops: int = 16) -> Tuple[Path, Path, Path]:
    """(FP32, ORT dynamic int8, ORT static int8 QDQ) graphs for ``size`` x ``size`` input."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(extractor, workdir / f'fp32_{size}.onnx', (size, size), PipelineConfig(long_side=size),
                       force=True)
    dyn = workdir / f'dynint8_{size}.onnx'
    quantize_dynamic(str(fp32), str(dyn), weight_type=QuantType.QInt8)
    stat = workdir / f'qdq_minmax_{size}.onnx'
    crops = [c.numpy() for c in make_crops(calibration_images, static_crops, seed=7, size=size)]
    quantize_static(str(fp32), str(stat), _Reader(crops), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=['MatMul', 'Gemm'])
    return fp32, dyn, stat
