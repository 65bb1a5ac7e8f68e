"""The graphs a user would pick instead of GPLQ, made from our FP32 export: ONNX Runtime
dynamic int8 (``quantize_dynamic``, no calibration), static int8 QDQ (``quantize_static``,
MinMax, per-channel weights, on crops of the calibration images) and NNCF int8
post-training quantization (``nncf.quantize``, transformer model type, on the same crops;
a QDQ ONNX graph that OpenVINO, and ORT, run)."""
import json
from pathlib import Path
from typing import List, Tuple

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

from gplq_ros.offline.data import make_crops
from gplq_ros.offline.onnx_export import export_onnx, save_model
from gplq_ros.onboard.engine import graph_meta
from gplq_ros.onboard.pipeline import PipelineConfig


class _Reader:
    """onnxruntime CalibrationDataReader over prepared real crops."""

    def __init__(self, tensors):
        self.it = iter([{'pixels': t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


def peer_graphs(extractor, workdir: Path, size, calibration_images: List[np.ndarray],
                static_crops: int = 16) -> Tuple[Path, Path, Path]:
    """(FP32, ORT dynamic int8, ORT static int8 QDQ) graphs for ``size`` (int: square, or (h, w))."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    tag = f'{hw[0]}' if hw[0] == hw[1] else f'{hw[0]}x{hw[1]}'
    fp32 = export_onnx(extractor, workdir / f'fp32_{tag}.onnx', hw, PipelineConfig(long_side=max(hw)), force=True)
    dyn = workdir / f'dynint8_{tag}.onnx'
    quantize_dynamic(str(fp32), str(dyn), weight_type=QuantType.QInt8)
    stat = workdir / f'qdq_minmax_{tag}.onnx'
    crops = [c.numpy() for c in make_crops(calibration_images, static_crops, seed=7, size=hw)]
    quantize_static(str(fp32), str(stat), _Reader(crops), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=['MatMul', 'Gemm'])
    return fp32, dyn, stat


def nncf_int8_graph(fp32: Path, out: Path, calibration_images: List[np.ndarray], crops: int = 64,
                    seed: int = 7) -> Path:
    """NNCF int8 PTQ (8-bit symmetric weights per channel, transformer preset) of an FP32
    graph from ``export_onnx``, on ``crops`` crops of the calibration images at its input size."""
    import nncf  # optional: a peer for the benchmarks, heavy to import
    model = onnx.load(str(fp32))
    meta = graph_meta(model)
    h, w = meta['input_hw']
    tensors = [c.numpy() for c in make_crops(calibration_images, crops, seed=seed, size=(h, w))]
    data = nncf.Dataset(tensors, lambda t: {'pixels': t})
    q = nncf.quantize(model, data, subset_size=len(tensors), model_type=nncf.ModelType.TRANSFORMER)
    del q.metadata_props[:]
    q.metadata_props.add(key='gplq_ros', value=json.dumps({**meta, 'kind': 'nncf_int8'}, sort_keys=True))
    return save_model(q, out, force=True)
