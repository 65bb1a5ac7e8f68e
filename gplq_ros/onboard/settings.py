"""One home per setting: name, default, help, range and choices live in a config
dataclass's field metadata; validation, ROS parameter declarations, command-line options,
YAML checks and README tables all read them from there (no torch, no rclpy).

Usage::

    @dataclass(frozen=True)
    class LocalizerConfig:
        top_k: int = setting(24, 'tiles retrieved per frame', range=(1, 1000))
        mode: str = setting('a', 'what to do', choices=('a', 'b'))

        def __post_init__(self):
            validate(self)

Ranges are closed intervals ``[lo, hi]`` (as ROS 2 parameter ranges are). ``choices`` is
the tuple of allowed values; ``none`` is the command-line value that means None (e.g.
``--group-size 0``); ``read_only`` is the ROS parameter's (a setting read once, at
configure). A field may be Optional: None is then always valid.

Nested configs (the offline calibration: one sub-config per stage): a field whose type is a
config dataclass (or Optional of one; None = that stage off) is a setting too, and its
fields become command-line options named ``prefix + field`` (``setting(..., prefix=
'rounding_')``: ``RoundingConfig.iters`` is ``--rounding-iters``; a trailing ``_`` of a
field name is dropped: ``lambda_`` -> ``--rounding-lambda``). ``options_of(cls)`` lists
them, ``build(cls, values)`` makes the config from option values:

* an Optional sub-config whose default is None is turned on by its options, and needs its
  fields without default (``--rounding-batch 4`` alone is refused: it needs
  ``--rounding-iters``);
* ``none`` on a field of an Optional sub-config that is not itself Optional is the value
  that turns the sub-config off (``--rounding-iters 0``, ``--epochs 0``); other options of
  the sub-config given with it contradict it;
* a class may add options that are not fields (``SHORTHANDS``: a tuple of ``Setting``) and
  translate them in its own ``from_options`` classmethod before calling ``build``.
"""
import dataclasses
import enum
import functools
import typing
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ['setting', 'validate', 'settings_of', 'Setting', 'check_exclusive', 'Option', 'options_of', 'build',
           'config_type']


def setting(default: Any = dataclasses.MISSING, help: str = '', *, range: Optional[Tuple[float, float]] = None,
            choices: Optional[Sequence[Any]] = None, none: Any = None, read_only: bool = True,
            default_factory: Any = dataclasses.MISSING, prefix: str = '') -> Any:
    """A dataclass field carrying its own help, range (inclusive) and choices; ``prefix``
    (sub-config fields only) is put before the names of the sub-config's options."""
    if isinstance(choices, type) and issubclass(choices, enum.Enum):
        choices = tuple(m.value for m in choices)
    md = {'help': help, 'read_only': read_only}
    if range is not None:
        lo, hi = range
        if not lo <= hi:
            raise ValueError(f'setting range {range}: lower bound above upper bound')
        md['range'] = (lo, hi)
    if choices is not None:
        md['choices'] = tuple(choices)
    if none is not None:
        md['none'] = none
    if prefix:
        md['prefix'] = prefix
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


@dataclass(frozen=True)
class Setting:
    """One field of a config dataclass as the tools and nodes see it."""
    name: str
    default: Any
    help: str
    range: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[Any, ...]] = None
    none: Any = None
    read_only: bool = True
    optional: bool = False      # None is valid (the field is Optional, or its default is None)
    required: bool = False      # the field has no default

    def describe_range(self) -> str:
        if self.choices is not None:
            return ' | '.join(str(c) for c in self.choices)
        if self.range is not None:
            return f'[{self.range[0]:g}, {self.range[1]:g}]'
        return ''


@functools.lru_cache(maxsize=None)
def _types(cls) -> Dict[str, Tuple[Any, bool]]:
    """{field: (type without Optional, whether Optional)} of dataclass ``cls``."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:   # an annotation that cannot be resolved: no type information
        return {}
    out = {}
    for name, hint in hints.items():
        args = typing.get_args(hint)
        optional = typing.get_origin(hint) is typing.Union and type(None) in args
        base = [a for a in args if a is not type(None)] if optional else [hint]
        out[name] = (base[0] if len(base) == 1 else hint, optional)
    return out


def config_type(cls, name: str):
    """The config dataclass a field of ``cls`` holds (None: a plain value)."""
    tp = _types(cls).get(name, (None, False))[0]
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def settings_of(cls_or_obj) -> Iterator[Setting]:
    """The fields of a config dataclass that are settings (``version`` and fields without
    help are skipped)."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    types = _types(cls)
    for f in dataclasses.fields(cls_or_obj):
        md = f.metadata
        if 'help' not in md:
            continue
        required = False
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default, required = None, True
        optional = types.get(f.name, (None, False))[1] or (default is None and not required)
        yield Setting(f.name, default, md['help'], md.get('range'), md.get('choices'), md.get('none'),
                      md.get('read_only', True), optional, required)


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def _problem(s: Setting, value: Any) -> Optional[str]:
    if value is None:
        return None if s.optional else 'must be set'
    if s.choices is not None:
        return None if value in s.choices else f'must be one of {list(s.choices)}'
    if s.range is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f'must be a number in [{s.range[0]:g}, {s.range[1]:g}]'
        if not s.range[0] <= value <= s.range[1]:
            return f'must be in [{s.range[0]:g}, {s.range[1]:g}]'
    return None


def validate(obj) -> None:
    """Raise ValueError naming the first field (``Class.field=value``) outside its range or
    choices."""
    for s in settings_of(obj):
        value = getattr(obj, s.name)
        why = _problem(s, value)
        sub = config_type(type(obj), s.name)
        if not why and sub is not None and value is not None and not isinstance(value, sub):
            why = f'must be a {sub.__name__}'
        if why:
            raise ValueError(f'{type(obj).__name__}.{s.name}={value!r}: {why}')


def check_exclusive(given: Dict[str, Any], *groups: Sequence[str]) -> None:
    """Contradictory options: raise ValueError naming both when options of more than one of
    ``groups`` were given (a value not None). ``groups`` are tuples of option names."""
    hit = [[n for n in g if given.get(n) is not None] for g in groups]
    hit = [h for h in hit if h]
    if len(hit) > 1:
        a, b = hit[0][0], hit[1][0]
        raise ValueError(f'{_flag(a)} and {_flag(b)} contradict each other: give one of them')


@dataclass(frozen=True)
class Option:
    """One command-line option of a (possibly nested) config dataclass."""
    name: str                   # e.g. 'rounding_iters' (``--rounding-iters``)
    path: Tuple[str, ...]       # the field path, e.g. ('rounding', 'iters'); () for a shorthand
    setting: Setting
    kind: Any                   # the field's type without Optional: int, float, str, bool, List[str], ...
    group: Tuple[str, ...] = ()             # path of the sub-config holding it (() = the top level)
    group_help: str = ''                    # that sub-config's help

    @property
    def flag(self) -> str:
        return _flag(self.name)


def options_of(cls, _prefix: str = '', _path: Tuple[str, ...] = (), _help: str = '') -> List[Option]:
    """Every option of config dataclass ``cls``, sub-configs' included (see the module
    docstring); raises ValueError if two have the same name."""
    out = [] if _path else [Option(s.name, (), s, str) for s in getattr(cls, 'SHORTHANDS', ())]
    for s in settings_of(cls):
        sub = config_type(cls, s.name)
        if sub is not None:
            md = {f.name: f.metadata for f in dataclasses.fields(cls)}[s.name]
            out += options_of(sub, _prefix + md.get('prefix', ''), _path + (s.name,), s.help)
        else:
            out.append(Option(_prefix + s.name.rstrip('_'), _path + (s.name,), s, _types(cls)[s.name][0], _path,
                              _help))
    if not _path:
        seen = set()
        for o in out:
            if o.name in seen:
                raise ValueError(f'{cls.__name__}: two settings make the option {o.flag}')
            seen.add(o.name)
    return out


def build(cls, values: Dict[str, Any], strict: bool = True):
    """Config dataclass ``cls`` from option values ``{option name: value}`` (None = not
    given; unset options keep the defaults). ValueError names the options that contradict
    each other or are missing; ``strict=False`` drops the options of a sub-config that
    its switch turned off instead (for reading old flat records)."""
    opts = {o.name: o for o in options_of(cls)}
    unknown = sorted(set(values) - set(opts))
    if unknown:
        raise ValueError(f'{cls.__name__}: unknown option(s) {", ".join(_flag(n) for n in unknown)}')
    given = {n: v for n, v in values.items() if v is not None}
    left = [n for n in given if not opts[n].path]
    if left:
        raise ValueError(f'{cls.__name__}: {_flag(left[0])} is a shorthand: {cls.__name__}.from_options reads it')
    return _build(cls, given, list(opts.values()), (), strict)


def _build(cls, given: Dict[str, Any], opts: List[Option], path: Tuple[str, ...], strict: bool,
           base: Any = None):
    """``cls`` (at field path ``path``) from the given options; ``base``: the instance whose
    values unset options keep (None: the class defaults)."""
    kw = {}
    for s in settings_of(cls):
        here = path + (s.name,)
        sub = config_type(cls, s.name)
        if sub is None:
            o = next(o for o in opts if o.path == here)
            if o.name in given:
                v = given[o.name]
                kw[s.name] = None if s.optional and s.none is not None and v == s.none else v
            continue
        mine = [o for o in opts if o.path[:len(here)] == here and o.name in given]
        if not mine:
            continue
        current = getattr(base, s.name) if base is not None else s.default
        off = [o for o in mine if o.group == here and o.setting.none is not None and not o.setting.optional
               and given[o.name] == o.setting.none]
        if off:
            v = given[off[0].name]
            switch = f'{off[0].flag} {v:g}' if isinstance(v, float) else f'{off[0].flag} {v!r}'
            if not s.optional:
                raise ValueError(f'{switch}: the {s.name} stage cannot be off')
            rest = [o for o in mine if o not in off]
            if rest and strict:
                raise ValueError(f'{rest[0].flag} and {switch} contradict each other: {switch} turns the '
                                 f'{s.name} stage off')
            kw[s.name] = None
            continue
        if current is None:   # off: its options turn it on; its fields without default must be among them
            missing = [o for o in opts if o.group == here and o.setting.required and o.name not in given]
            if missing:
                raise ValueError(f'{mine[0].flag} needs {missing[0].flag} (which turns the {s.name} stage on)')
        kw[s.name] = _build(sub, given, opts, here, strict, current)
    return dataclasses.replace(base, **kw) if base is not None else cls(**kw)
