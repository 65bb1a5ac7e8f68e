"""What the console scripts share: user errors as one line, and argparse options generated
from the validated config dataclasses (one list of fields, one set of defaults)."""
import argparse
import dataclasses
import functools
import sys
import typing
from typing import Iterable

from gplq_ros.offline.asset_store import AssetError
from gplq_ros.offline.weights import WeightsError
from gplq_ros.onboard.artifact import ArtifactError
from gplq_ros.onboard.engine import EngineError
from gplq_ros.onboard.placemap import MapError
from gplq_ros.onboard.vocabulary import VocabError

USER_ERRORS = (FileNotFoundError, FileExistsError, VocabError, WeightsError, ArtifactError, AssetError,
               EngineError, MapError)


def cli(prog: str):
    """Wrap a console-script main: user errors print one line and exit 2 (no traceback)."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv=None) -> int:
            try:
                return fn(argv)
            except USER_ERRORS as e:
                print(f'{prog}: error: {e}', file=sys.stderr)
                return 2
        return main
    return wrap


def add_config_arguments(ap: argparse.ArgumentParser, cls, skip: Iterable[str] = ('version',),
                         title: str = None) -> None:
    """One ``--field-name`` option per field of dataclass ``cls``: default = the field's
    default (None: the dataclass decides), help and choices from ``field(metadata=...)``;
    bools become flags, lists ``nargs='*'``; ``metadata['none']`` is the option value that
    means None (e.g. ``--group-size 0``: per output channel)."""
    group = ap.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        md = f.metadata
        opt = '--' + f.name.replace('_', '-')
        kind = hints[f.name]
        base = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = base[0] if base and typing.get_origin(kind) is typing.Union else kind
        text = md.get('help', '') + (f' (default {default!r})' if not isinstance(default, bool) else '')
        if kind is bool:
            group.add_argument(opt, action='store_true', help=md.get('help', ''))
        elif typing.get_origin(kind) in (list, typing.List):
            group.add_argument(opt, nargs='*', default=None, help=text)
        else:
            group.add_argument(opt, type=kind, default=None, choices=md.get('choices'), help=text)


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass from the options ``add_config_arguments`` made: options left unset keep
    the dataclass default; ``overrides`` (not None) win."""
    kw = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if f.type is bool or f.type == 'bool':
            v = v or None
        if v is not None:
            kw[f.name] = None if 'none' in f.metadata and v == f.metadata['none'] else v
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**kw)
