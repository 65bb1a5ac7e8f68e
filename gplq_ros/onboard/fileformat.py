"""Shared helpers for gplq_ros's own files and configs (numpy only, no torch), and the
errors of the offline asset and weight readers (``AssetError``, ``WeightsError``) that the
console scripts report as one line: defined here so that ``tools.common`` and the onboard
tools never import ``offline`` (torch)."""
import hashlib
import json
from pathlib import Path
from typing import Iterable, Tuple, Type

from safetensors import safe_open

BACKBONE_ID = 'dinov2_vits14'   # the backbone every artifact, graph and vocabulary records


class AssetError(RuntimeError):
    """An asset that could not be fetched or verified; the message says what to do
    (raised by ``offline.asset_store``)."""


class WeightsError(ValueError):
    """Weights that cannot be turned into a DINOv2-S/14 timm state dict (raised by
    ``offline.weights``)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def check_versioned(meta: dict, fmt: str, version, source, error: Type[Exception]) -> dict:
    """``meta`` if its format and version are the ones this gplq_ros reads (``version``: one
    version or a tuple of them), else ``error``."""
    versions = tuple(version) if isinstance(version, (tuple, list)) else (version,)
    if meta.get('format') != fmt or meta.get('version') not in versions:
        said = ' or '.join(str(v) for v in versions)
        raise error(f'{source}: format={meta.get("format")!r} version={meta.get("version")!r} is not '
                    f'supported (this gplq_ros reads {fmt!r} version {said})')
    return meta


def read_versioned_meta(path: Path, fmt: str, version, what: str, hint: str,
                        error: Type[Exception]) -> dict:
    """The JSON under safetensors header key ``gplq_ros``, checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise error(f'{what} not found: {path} ({hint})')
    try:
        with safe_open(str(path), framework='numpy') as f:
            raw = (f.metadata() or {}).get('gplq_ros')
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise error(f'{path}: not a readable safetensors file ({e})') from None
    if raw is None:
        raise error(f'{path}: no gplq_ros metadata; not a gplq_ros {what}')
    return check_versioned(json.loads(raw), fmt, version, path, error)


def check_fields(obj, checks: Iterable[Tuple[str, bool]]) -> None:
    """Raise ValueError naming the first field whose check is False, with its value."""
    for name, ok in checks:
        if not ok:
            raise ValueError(f'{type(obj).__name__}.{name}={getattr(obj, name)!r} is out of range')
