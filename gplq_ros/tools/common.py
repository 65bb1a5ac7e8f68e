"""What the console scripts share: user errors as one line, and argparse options generated
from the validated config dataclasses (one list of fields, one set of defaults).

Imports no ``offline`` module (torch): the onboard tools (gplq_map, gplq_eval_bag, gplq_up,
gplq_record) run where torch and timm are not installed (tested)."""
import argparse
import functools
import sys
import typing
from typing import Iterable

from gplq_ros.onboard.artifact import ArtifactError
from gplq_ros.onboard.engine import EngineError
from gplq_ros.onboard.fileformat import AssetError, WeightsError
from gplq_ros.onboard.placemap import MapError
from gplq_ros.onboard.settings import build, options_of
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
    """One ``--option-name`` per setting of dataclass ``cls`` (``onboard.settings.options_of``:
    the fields of its sub-configs too, with their prefixes, and its ``SHORTHANDS``): default
    None (the dataclass decides; the help says the default), help and choices from the field's
    ``setting``; bools become flags, lists ``nargs='*'``; the ``none`` value of a setting
    (``--group-size 0``, ``--rounding-iters 0``) is accepted beside its choices."""
    groups = {}
    for o in options_of(cls):
        if o.name in skip:
            continue
        if o.group not in groups:
            name = title or cls.__name__
            groups[o.group] = ap.add_argument_group(f'{name}: {".".join(o.group)}' if o.group else name,
                                                    o.group_help or None)
        group, s = groups[o.group], o.setting
        text = s.help
        if s.range is not None and s.choices is None:
            text += f' {s.describe_range()}'
        if s.default is not None and not isinstance(s.default, bool):
            text += f' (default {s.default!r})'
        if o.kind is bool:
            group.add_argument(o.flag, dest=o.name, action='store_true', help=text)
        elif typing.get_origin(o.kind) in (list, typing.List):
            group.add_argument(o.flag, dest=o.name, nargs='*', default=None, help=text)
        else:
            choices = None if s.choices is None else tuple(s.choices) + ((s.none,) if s.none is not None else ())
            group.add_argument(o.flag, dest=o.name, type=o.kind, default=None, choices=choices, help=text)


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass from the options ``add_config_arguments`` made: options left unset keep
    the dataclass default; ``overrides`` (option names, not None) win. Built by
    ``cls.from_options`` where the class has one (it reads its shorthands), else by
    ``onboard.settings.build``; contradicting options raise ValueError naming both."""
    values = {}
    for o in options_of(cls):
        v = getattr(args, o.name, None)
        if o.kind is bool:
            v = v or None
        if v is not None:
            values[o.name] = v
    values.update({k: v for k, v in overrides.items() if v is not None})
    from_options = getattr(cls, 'from_options', None)
    return from_options(**values) if from_options else build(cls, values)
