"""The bringup as local processes (``gplq_up``, ``gplq_flight_demo``, tests): each node runs
as ``python -m <module> --ros-args ...`` with the bringup's parameters and remappings, with
``record_bag:=true`` gplq_record too; stopped with SIGINT."""
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from gplq_ros.bringup import description


def parse_overrides(items: List[str]) -> Dict[str, str]:
    out = {}
    for it in items:
        if ':=' not in it:
            raise ValueError(f'argument {it!r}: expected name:=value')
        k, v = it.split(':=', 1)
        out[k] = v
    return out


def commands(overrides: Dict[str, str], stamp: Optional[str] = None) -> List[Tuple[str, List[str]]]:
    """(name, argv) of every process of the bringup."""
    cmds = [(s.name, [sys.executable, '-m', s.module, *description.ros_argv(s)])
            for s in description.node_specs(overrides)]
    rec = description.record_command(overrides, stamp)
    if rec is not None:
        cmds.append(('gplq_record', [sys.executable, '-m', 'gplq_ros.tools.record', *rec]))
    return cmds


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stoppable_by_signals() -> None:
    """SIGINT and SIGTERM stop this process with KeyboardInterrupt (so that it stops its node
    processes), also when it was started in the background: a non-interactive shell starts
    `cmd &` with SIGINT ignored, Python then keeps it ignored, and a SIGINT left the bringup
    running (seen when the test suite ran as a background job)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def start(cmds, stdout=None, overrides: Optional[Dict[str, str]] = None) -> List[Tuple[str, subprocess.Popen]]:
    """Start every (name, argv) with the bringup's environment (``description.environment()``),
    SIGINT at its default in each (``stop`` sends it; an inherited "ignored" would survive exec)."""
    env = dict(os.environ)
    for k, v in description.environment(overrides).items():
        env.setdefault(k, v)
    err = subprocess.STDOUT if stdout is not None else None
    return [(name, subprocess.Popen(cmd, env=env, stdout=stdout, stderr=err, preexec_fn=_default_sigint))
            for name, cmd in cmds]


def watch(procs, seconds: Optional[float], fails=lambda returncode: returncode != 0) -> List[Tuple[str, int]]:
    """Wait ``seconds`` (None: until Ctrl-C) or until a process exits in a way ``fails``;
    returns the (name, returncode) of the processes that did."""
    end = time.monotonic() + seconds if seconds else None
    failed = []
    while not failed and (end is None or time.monotonic() < end):
        time.sleep(0.2)
        failed = [(name, p.returncode) for name, p in procs if p.poll() is not None and fails(p.returncode)]
    return failed


def stop(procs, timeout: float = 10.0) -> None:
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.monotonic() + timeout
    for _, p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
