"""gplq_up: start the onboard graph of ``gplq_ros.graph`` here, as ``ros2 launch gplq_ros
drone.launch.py`` starts it where launch_ros is installed.

usage: gplq_up [name:=value ...] [--duration S] [--print]
Each node runs as ``python -m <module> --ros-args ...`` with the graph's parameters and
remappings; with record_bag:=true gplq_record runs too. Ctrl-C (or --duration) stops all
of them with SIGINT. Exit status 1 if a node exited by itself with an error.
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from .. import graph


def parse_overrides(items: List[str]) -> Dict[str, str]:
    out = {}
    for it in items:
        if ':=' not in it:
            raise ValueError(f'argument {it!r}: expected name:=value')
        k, v = it.split(':=', 1)
        out[k] = v
    return out


def commands(overrides: Dict[str, str], stamp: Optional[str] = None) -> List[Tuple[str, List[str]]]:
    """(name, argv) of every process of the graph."""
    cmds = [(s.name, [sys.executable, '-m', s.module, *graph.ros_argv(s)]) for s in graph.node_specs(overrides)]
    rec = graph.record_command(overrides, stamp)
    if rec is not None:
        cmds.append(('gplq_record', [sys.executable, '-m', 'gplq_ros.tools.record', *rec]))
    return cmds


def start(cmds, stdout=None) -> List[Tuple[str, subprocess.Popen]]:
    """Start every (name, argv) with the graph's environment (``graph.environment()``)."""
    env = dict(os.environ)
    for k, v in graph.environment().items():
        env.setdefault(k, v)
    err = subprocess.STDOUT if stdout is not None else None
    return [(name, subprocess.Popen(cmd, env=env, stdout=stdout, stderr=err)) for name, cmd in cmds]


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_up', description=__doc__.split('\n\n')[0])
    ap.add_argument('overrides', nargs='*', help='launch arguments: ' + ', '.join(
        f'{a.name} (default {a.default!r})' for a in graph.ARGUMENTS))
    ap.add_argument('--duration', type=float, default=None, help='stop after this many seconds')
    ap.add_argument('--print', action='store_true', help='print the commands and exit')
    args = ap.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        cmds = commands(overrides)
    except ValueError as e:
        print(f'gplq_up: error: {e}', file=sys.stderr)
        return 2
    if args.print:
        for name, cmd in cmds:
            print(name + ': ' + ' '.join(cmd))
        return 0
    procs = start(cmds)
    failed = []
    try:
        failed = watch(procs, args.duration)
        for name, returncode in failed:
            print(f'gplq_up: {name} exited with status {returncode}', file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
