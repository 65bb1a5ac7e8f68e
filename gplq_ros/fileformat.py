"""Shared helpers for gplq_ros's own files and configs (numpy only, no torch)."""
import json
from pathlib import Path
from typing import Iterable, Tuple, Type


def read_versioned_meta(path: Path, fmt: str, version: int, what: str, hint: str,
                        error: Type[Exception]) -> dict:
    """The JSON under safetensors header key ``gplq_ros``, checked for format and version."""
    from safetensors import safe_open
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
    meta = json.loads(raw)
    if meta.get('format') != fmt or meta.get('version') != version:
        raise error(f'{path}: format={meta.get("format")!r} version={meta.get("version")!r} is not '
                    f'supported (this gplq_ros reads {fmt!r} version {version})')
    return meta


def check_fields(obj, checks: Iterable[Tuple[str, bool]]) -> None:
    """Raise ValueError naming the first field whose check is False, with its value."""
    for name, ok in checks:
        if not ok:
            raise ValueError(f'{type(obj).__name__}.{name}={getattr(obj, name)!r} is out of range')
