"""The FP32 torch reference pipeline: every quantized result is compared with this."""
import numpy as np
import torch

from gplq_ros.onboard.pipeline import Outputs, PipelineConfig, run_heads, single_thread_blas
from gplq_ros.onboard.preprocess import prepare


class ReferencePipeline:
    """The FP32 torch reference: every quantized result is compared with this."""

    def __init__(self, extractor, cfg: PipelineConfig = PipelineConfig(), vocab=None):
        if vocab is not None:
            m = vocab.meta
            if (m.block, m.facet) != (cfg.vlad_block, cfg.vlad_facet):
                raise ValueError(f'vocabulary built on block {m.block} facet {m.facet!r}, '
                                 f'config wants block {cfg.vlad_block} facet {cfg.vlad_facet!r}')
            if m.weights_sha256 != extractor.weights_sha256:
                raise ValueError('vocabulary was built with other backbone weights '
                                 f'({m.weights_sha256[:12]}... vs {extractor.weights_sha256[:12]}...)')
        self.extractor = extractor
        self.cfg = cfg
        self.vocab = vocab
        single_thread_blas()

    def features(self, image_rgb: np.ndarray):
        """(Prepared, feature_block tokens (N, C), vlad features (N, C)) as numpy."""
        prep = prepare(image_rgb, self.cfg.long_side)
        with torch.inference_mode():
            out = self.extractor(torch.from_numpy(prep.tensor), self.cfg.keys)
        tok = out[self.cfg.keys[0]][0].numpy()
        vf = out[self.cfg.keys[1]][0].numpy()
        return prep, tok, vf

    def __call__(self, image_rgb: np.ndarray) -> Outputs:
        prep, tok, vf = self.features(image_rgb)
        centers = self.vocab.centers if self.vocab is not None else None
        return run_heads(self.cfg, prep, tok, vf, centers)
