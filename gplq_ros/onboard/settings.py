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
"""
import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

__all__ = ['setting', 'validate', 'settings_of', 'Setting', 'check_exclusive']


def setting(default: Any = dataclasses.MISSING, help: str = '', *, range: Optional[Tuple[float, float]] = None,
            choices: Optional[Sequence[Any]] = None, none: Any = None, read_only: bool = True,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its own help, range (inclusive) and choices."""
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

    def describe_range(self) -> str:
        if self.choices is not None:
            return ' | '.join(str(c) for c in self.choices)
        if self.range is not None:
            return f'[{self.range[0]:g}, {self.range[1]:g}]'
        return ''


def settings_of(cls_or_obj) -> Iterator[Setting]:
    """The fields of a config dataclass that are settings (``version`` and fields without
    help are skipped)."""
    for f in dataclasses.fields(cls_or_obj):
        md = f.metadata
        if 'help' not in md:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        yield Setting(f.name, default, md['help'], md.get('range'), md.get('choices'), md.get('none'),
                      md.get('read_only', True))


def _problem(s: Setting, value: Any) -> Optional[str]:
    if value is None:
        return None if s.default is None else 'must be set'
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
        if why:
            raise ValueError(f'{type(obj).__name__}.{s.name}={value!r}: {why}')


def check_value(cls, name: str, value: Any) -> Optional[str]:
    """Why ``value`` is not valid for setting ``name`` of ``cls`` (None: it is)."""
    for s in settings_of(cls):
        if s.name == name:
            return _problem(s, value)
    return f'{cls.__name__} has no setting {name!r}'


def check_exclusive(given: Dict[str, Any], *groups: Sequence[str]) -> None:
    """Contradictory options: raise ValueError naming both when options of more than one of
    ``groups`` were given (a value not None). ``groups`` are tuples of option names."""
    hit = [[n for n in g if given.get(n) is not None] for g in groups]
    hit = [h for h in hit if h]
    if len(hit) > 1:
        a, b = hit[0][0], hit[1][0]
        raise ValueError(f'--{a.replace("_", "-")} and --{b.replace("_", "-")} contradict each other: '
                         'give one of them')
