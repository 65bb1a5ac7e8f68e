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
    env = dict(os.environ)
    for k, v in graph.environment().items():
        env.setdefault(k, v)
    procs = [(name, subprocess.Popen(cmd, env=env)) for name, cmd in cmds]
    failed = []
    try:
        end = time.monotonic() + args.duration if args.duration else None
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
            for name, p in procs:
                if p.poll() is not None and p.returncode != 0 and name not in failed:
                    failed.append(name)
                    print(f'gplq_up: {name} exited with status {p.returncode}', file=sys.stderr)
            if failed:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
