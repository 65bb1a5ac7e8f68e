"""Onboard engine: ONNX Runtime or OpenVINO + numpy heads. Imports neither torch nor rclpy.

``load(path)`` opens an ONNX graph written by ``offline.onnx_export`` (``gplq_export``;
fixed input size) and ``engine(image_uint8_rgb)`` returns ``onboard.pipeline.Outputs``
(tokens, boundary maps, corners, descriptor). Images of another size are resized to the
graph's input size (aspect ratio is not preserved: export the graph for the camera's aspect
ratio, e.g. 168x224 for 640x480 frames). Threads and execution providers are configurable (CPU by
default; CUDA/TensorRT are used when asked for and present); intra-op spinning is off so
that several sessions in one process do not steal each other's cores; numpy's BLAS is
held to one thread (``onboard.pipeline.single_thread_blas``); the session is warmed up at
load.

Backends (``backend=``): ``onnxruntime`` (CPU; CUDA/TensorRT execution providers when
asked for and present) and ``openvino`` (CPU; the same ONNX graph read from memory,
``precision`` f32 or bf16 for what stays float); both give the same outputs (token cosine
>= 0.999, tested) and the same refusals. ``auto`` (the default) is the rule measured on
this project's machine (docs/benchmarks.md, "Onboard runtime"): OpenVINO when it is installed,
only the CPU is asked for and the graph has no ORT-only ops (``ORT_ONLY_OPS``), else ONNX
Runtime.

GPLQ graphs exported packed (the default of ``gplq_export --model``) hold no int8 weight
codes: the engine reads them from the artifact (``artifact=``, by default the file the
graph names, next to it), checks that it is the artifact the graph was exported from
(checksum), decodes the 4-bit codes into int8 weights (``artifact.layer_int8``) and
hands ORT the completed graph in memory.
"""
import importlib.util
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx import numpy_helper

from gplq_ros.onboard.artifact import PACKED_PREFIX, ArtifactError, layer_int8, load_artifact
from gplq_ros.onboard.fileformat import check_versioned
from gplq_ros.onboard.graph_rewrite import integer_attention_scores
from gplq_ros.onboard.pipeline import Outputs, PipelineConfig, run_heads, single_thread_blas
from gplq_ros.onboard.preprocess import prepare
from gplq_ros.onboard.vocabulary import Vocabulary, VocabError

# the ONNX metadata this engine reads (written by offline.onnx_export)
GRAPH_FORMAT = 'gplq_ros.onnx'
GRAPH_VERSION = 1
BACKENDS = ('auto', 'onnxruntime', 'openvino')
PRECISIONS = ('f32', 'bf16')


class EngineError(ValueError):
    """A model file the engine cannot run; the message says why."""


def graph_meta(model) -> Optional[dict]:
    """The ``gplq_ros`` metadata (JSON) of an ONNX model (a loaded ModelProto), or None."""
    raw = {p.key: p.value for p in model.metadata_props}.get('gplq_ros')
    return json.loads(raw) if raw is not None else None


# ops that OpenVINO runs far slower than ONNX Runtime (ORT dynamic int8 graphs: 2.1-2.7x, measured)
ORT_ONLY_OPS = frozenset({'DynamicQuantizeLinear'})


def resolve_backend(backend: str, providers: Optional[Sequence[str]] = None, op_types=()) -> str:
    """``auto`` -> the backend this machine runs fastest (see the module text)."""
    if backend not in BACKENDS:
        raise EngineError(f'backend={backend!r}: must be one of {BACKENDS}')
    if backend != 'auto':
        return backend
    cpu_only = all(p == 'CPUExecutionProvider' for p in (providers or ['CPUExecutionProvider']))
    fits = cpu_only and not ORT_ONLY_OPS.intersection(op_types)
    return 'openvino' if fits and importlib.util.find_spec('openvino') is not None else 'onnxruntime'


class _OrtRunner:
    def __init__(self, source, threads: int, providers: Sequence[str], disabled: Sequence[str], path: Path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')
        try:
            self.session = ort.InferenceSession(source, so, providers=list(providers),
                                                disabled_optimizers=list(disabled))
        except Exception as e:  # ORT raises its own types for malformed graphs
            raise EngineError(f'{path}: onnxruntime cannot load it ({str(e)[:300]})') from None
        self.description = f'onnxruntime {self.session.get_providers()[0]}'

    def __call__(self, pixels: np.ndarray):
        tokens, vlad_features = self.session.run(['tokens', 'vlad_features'], {'pixels': pixels})
        return tokens, vlad_features


class _OpenVinoRunner:
    def __init__(self, source: bytes, threads: int, precision: str, path: Path, pin: bool = True):
        try:
            import openvino  # optional: only this backend needs it
        except ImportError:
            raise EngineError('backend=openvino: the openvino package is not installed '
                              '(pip install openvino, or use backend=onnxruntime)') from None
        core = openvino.Core()
        config = {'INFERENCE_NUM_THREADS': threads, 'NUM_STREAMS': 1, 'PERFORMANCE_HINT': 'LATENCY',
                  'INFERENCE_PRECISION_HINT': precision}
        if not pin:                      # else OpenVINO's own default
            config['ENABLE_CPU_PINNING'] = False
        try:
            compiled = core.compile_model(core.read_model(model=source), 'CPU', config)
        except Exception as e:  # OpenVINO raises its own types for graphs it cannot read
            raise EngineError(f'{path}: openvino cannot load it ({str(e)[:300]})') from None
        self.request = compiled.create_infer_request()
        self.outputs = (compiled.output('tokens'), compiled.output('vlad_features'))
        self.description = f'openvino CPU {precision}'

    def __call__(self, pixels: np.ndarray):
        result = self.request.infer({'pixels': pixels})
        return result[self.outputs[0]], result[self.outputs[1]]


class Engine:
    """One ONNX graph of gplq_ros (GPLQ or FP32, ``kind``) ready to run on one backend.

    ``engine(image)`` (uint8 RGB, any size: resized to the graph's ``input_hw``) returns the
    ``Outputs`` of the heads (``onboard.pipeline.run_heads``): final tokens, boundary map,
    corners and, with vocabulary ``centers`` (K, 384), the VLAD descriptor;
    ``features(image)`` returns the preprocessed input and the graph's raw outputs only.
    Construction does all the checking, so that a frame never fails on a bad model: the file
    is read and its ``gplq_ros`` metadata checked (format, version), the backend resolved
    (``resolve_backend``; providers and precision must fit it), a packed graph completed from
    its artifact (checksum checked), the session created with ``threads`` intra-op threads
    and warmed up ``warmup`` times; every refusal is an ``EngineError`` naming the setting.
    ``meta`` is the graph's metadata, ``cfg`` the ``PipelineConfig`` it was exported with,
    ``description`` the backend and device. Call it from one thread at a time (the OpenVINO
    backend keeps a single infer request). ``pin_threads``: OpenVINO pins its threads to the
    first cores (its default, kept for the nodes); several engines of fewer threads than cores
    in one machine (gplq_map's workers) then share the same cores: measured 35 ms a frame each
    for two 1-thread engines instead of 16.7 unpinned (168x224, 2 cores), so they pass False.
    """

    def __init__(self, path: Path, threads: int = 2, providers: Optional[Sequence[str]] = None,
                 centers: Optional[np.ndarray] = None, warmup: int = 2, artifact: Optional[Path] = None,
                 backend: str = 'auto', precision: str = 'f32', pin_threads: bool = True):
        path = Path(path)
        if not path.is_file():
            raise EngineError(f'model file not found: {path}')
        if threads < 1:
            raise EngineError(f'threads={threads}: must be >= 1')
        if precision not in PRECISIONS:
            raise EngineError(f'precision={precision!r}: must be one of {PRECISIONS}')
        wanted = list(providers or ['CPUExecutionProvider'])
        resolve_backend(backend, wanted)  # refuses an unknown backend before the model is read
        try:
            model = onnx.load(str(path))
        except Exception as e:  # protobuf raises its own types for malformed files
            raise EngineError(f'{path}: not a readable ONNX model, cannot load it ({str(e)[:300]})') from None
        self.backend = resolve_backend(backend, wanted, {n.op_type for n in model.graph.node})
        if self.backend == 'onnxruntime':
            available = ort.get_available_providers()
            missing = [p for p in wanted if p not in available]
            if missing:
                raise EngineError(f'providers={missing} not available in this onnxruntime ({available})')
            if precision != 'f32':
                raise EngineError(f'precision={precision!r}: only the openvino backend runs other than f32')
        elif wanted != ['CPUExecutionProvider']:
            raise EngineError(f'providers={wanted}: execution providers are an onnxruntime setting; '
                              f'backend={self.backend} runs on the CPU')
        self.meta = graph_meta(model)
        if self.meta is None:
            raise EngineError(f'{path}: no gplq_ros metadata; export it with gplq_export')
        check_versioned(self.meta, GRAPH_FORMAT, GRAPH_VERSION, path, EngineError)
        # In GPLQ graphs ORT's MatMul+Add -> Gemm fusion runs before its QDQ fusions and
        # leaves DQ(act) x DQ(int8 W) as a float Gemm (measured 69 ms at 224 px, 2 threads);
        # without it they become MatMulIntegerToFloat (22 ms). FP32 graphs need the fusion.
        # QDQ propagation moves Q/DQ pairs across other ops and so changes where activations
        # are rounded: without it the graph computes what the calibrated model computes
        # (final-token cosine to the torch fake-quant model 0.9983 -> 0.9994 on an Intel
        # Xeon, same latency within noise).
        disabled = ['MatMulAddFusion', 'QDQPropagationTransformer'] if self.meta.get('kind') == 'gplq' else []
        self.artifact = None
        source = str(path)
        if self.meta.get('packed_layers'):
            self.artifact = Path(artifact) if artifact else path.parent / self.meta['artifact_file']
            _fill_packed(model, self.meta, self.artifact)
            source = model.SerializeToString()
        # ONNX Runtime runs a GPLQ graph's int8 attention scores fastest as its own integer
        # MatMul (onboard.graph_rewrite; 0.94 -> 0.83-0.84x ORT dynamic int8, measured), which
        # OpenVINO would run in float: the file keeps the Q/DQ form and ORT gets it rewritten.
        self.ort_rewrites = 0
        if self.backend == 'onnxruntime' and self.meta.get('kind') == 'gplq' \
                and self.meta.get('rewrites') != 'onnxruntime':
            self.ort_rewrites = integer_attention_scores(model)
            if self.ort_rewrites:
                source = model.SerializeToString()
        if self.backend == 'openvino':
            source = source if isinstance(source, bytes) else model.SerializeToString()
            del model
            self.runner = _OpenVinoRunner(source, threads, precision, path, pin_threads)
        else:
            del model
            self.runner = _OrtRunner(source, threads, wanted, disabled, path)
        self.input_hw = tuple(self.meta['input_hw'])
        self.cfg = PipelineConfig(**self.meta['pipeline'])
        if centers is not None and centers.shape[1] != 384:
            raise EngineError(f'vocabulary centers shape {centers.shape}: expected (K, 384)')
        self.centers = centers
        self.path = path
        single_thread_blas()
        zero = np.zeros((self.input_hw[0], self.input_hw[1], 3), np.uint8)
        for _ in range(warmup):
            self(zero)

    @property
    def kind(self) -> str:
        return self.meta['kind']

    @property
    def description(self) -> str:
        """The backend and device that run the graph, e.g. 'openvino CPU f32'."""
        return self.runner.description

    def features(self, image_rgb: np.ndarray):
        prep = prepare(image_rgb, size=self.input_hw)
        tokens, vlad_features = self.runner(prep.tensor)
        return prep, tokens[0], vlad_features[0]

    def __call__(self, image_rgb: np.ndarray) -> Outputs:
        prep, tok, vf = self.features(image_rgb)
        return run_heads(self.cfg, prep, tok, vf, self.centers)


def _fill_packed(model, meta: dict, artifact: Path) -> None:
    """Add the int8 code initializers of a packed graph from its artifact's 4-bit codes."""
    if not artifact.is_file():
        raise EngineError(f'artifact={artifact}: not found (this graph takes its weights from it)')
    try:
        tensors, ameta = load_artifact(artifact)
    except ArtifactError as e:
        raise EngineError(str(e)) from None
    if ameta['checksum'] != meta.get('artifact_checksum'):
        raise EngineError(f'artifact={artifact}: checksum {ameta["checksum"][:12]}... is not the one this graph '
                          f'was exported from ({str(meta.get("artifact_checksum"))[:12]}...); export it again')
    for name in meta['packed_layers']:
        try:
            codes = layer_int8(tensors, name, ameta['layers'][name])
        except ArtifactError as e:
            raise EngineError(f'artifact={artifact}: {e}') from None
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(codes.T),
                                                               PACKED_PREFIX + name))


def load(path: Path, vocabulary: Optional[Path] = None, **kw) -> Engine:
    """``vocabulary``: a gplq_vocab file whose centers give the VLAD descriptor; it must have
    been built with the backbone weights the graph was exported from."""
    if vocabulary is None:
        return Engine(path, **kw)
    try:
        vocab = Vocabulary.load(Path(vocabulary))
    except VocabError as e:
        raise EngineError(str(e)) from None
    engine = Engine(path, centers=vocab.centers, **kw)
    if vocab.meta.weights_sha256 != engine.meta.get('weights_sha256'):
        raise EngineError(f'vocabulary={vocabulary}: built for weights sha256={vocab.meta.weights_sha256[:12]}..., '
                          f'the graph for {str(engine.meta.get("weights_sha256"))[:12]}...')
    return engine
