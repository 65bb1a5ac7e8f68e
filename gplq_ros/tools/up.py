"""gplq_up: start the bringup of ``gplq_ros.bringup.description`` here, as ``ros2 launch gplq_ros
drone.launch.py`` starts it where launch_ros is installed.

usage: gplq_up [name:=value ...] [--duration S] [--print]
Each node runs as ``python -m <module> --ros-args ...`` with the bringup's parameters and
remappings; with record_bag:=true gplq_record runs too. Ctrl-C (or --duration) stops all
of them with SIGINT. Exit status 1 if a node exited by itself with an error.
"""
import argparse
import sys

from gplq_ros.bringup import description
from gplq_ros.bringup.processes import commands, parse_overrides, start, stop, stoppable_by_signals, watch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_up', description=__doc__.split('\n\n')[0])
    ap.add_argument('overrides', nargs='*', help='launch arguments: ' + ', '.join(
        f'{a.name} (default {a.default!r})' for a in description.ARGUMENTS))
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
    stoppable_by_signals()
    procs = start(cmds, overrides=overrides)
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
