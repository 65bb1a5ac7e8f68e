"""Typed ROS parameters declared with descriptors (description, range or choices,
read-only), validated in one on-set callback that names the parameter and the value.

A library config dataclass whose fields are ``onboard.settings.setting``s is declared with
``declare_settings``: one ROS parameter per field, same name, default, description, range,
choices and read-only flag (the dataclass is the one home of each setting)."""
from typing import Dict, Iterable, Optional, Sequence, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from gplq_ros.onboard.settings import settings_of


class Params:
    """A node's typed ROS parameters. ``declare(name, default, description, range or choices,
    read_only)`` returns the value the node started with, refused if it is not one of the
    choices (ROS enforces ranges through the descriptor). ``declare_settings(cls)`` declares
    every field of an ``onboard.settings`` config dataclass; ``settings(cls)`` builds it from
    the current values. ``params[name]`` is the current value, kept up to date by one on-set
    callback that refuses values outside the choices, naming the parameter."""

    def __init__(self, node):
        self.node = node
        self.choices: Dict[str, Tuple[str, ...]] = {}
        self.values: Dict[str, object] = {}
        node.add_on_set_parameters_callback(self._validate)

    def declare(self, name: str, default, description: str, range_: Optional[Tuple] = None,
                choices: Optional[Sequence[str]] = None, read_only: bool = False):
        d = ParameterDescriptor(description=description, read_only=read_only)
        if choices:
            self.choices[name] = tuple(choices)
            d.additional_constraints = f'one of {list(choices)}'
        if range_ is not None:
            lo, hi = range_
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                raise TypeError(f'{name}: a range needs a numeric default')
            if isinstance(default, int):
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
            else:
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        value = self.node.declare_parameter(name, default, d).value
        if name in self.choices and value not in self.choices[name]:
            raise ValueError(f'parameter {name}={value!r}: must be one of {list(self.choices[name])}')
        self.values[name] = value
        return value

    def declare_settings(self, cls, skip: Iterable[str] = ()) -> dict:
        """Declare every setting of config dataclass ``cls`` (``onboard.settings``) as a
        parameter of the same name; returns {name: value} for ``cls(**values)``."""
        skip = set(skip)
        out = {}
        for s in settings_of(cls):
            if s.name in skip:
                continue
            out[s.name] = self.declare(s.name, s.default, s.help, s.range, s.choices, read_only=s.read_only)
        return out

    def settings(self, cls, **given):
        """An instance of config dataclass ``cls`` from the parameters' current values (those
        declared by ``declare_settings``; ``given`` for the skipped ones)."""
        values = {s.name: self.values[s.name] for s in settings_of(cls) if s.name not in given}
        return cls(**values, **given)

    def __getitem__(self, name: str):
        return self.values[name]

    def _validate(self, params) -> SetParametersResult:
        for p in params:
            if p.name in self.choices and p.value not in self.choices[p.name]:
                return SetParametersResult(successful=False,
                                           reason=f'{p.name}={p.value!r}: must be one of {list(self.choices[p.name])}')
        for p in params:
            self.values[p.name] = p.value
        return SetParametersResult(successful=True)


def declare_qos(params: Params, prefix: str, reliability: str, depth: int, what: str) -> QoSProfile:
    rel = params.declare(f'{prefix}_reliability', reliability, f'QoS reliability of {what}',
                         choices=('best_effort', 'reliable'), read_only=True)
    dep = params.declare(f'{prefix}_depth', depth, f'QoS history depth (keep last) of {what}', (1, 1000),
                         read_only=True)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=dep,
                      reliability=ReliabilityPolicy.BEST_EFFORT if rel == 'best_effort' else ReliabilityPolicy.RELIABLE)
