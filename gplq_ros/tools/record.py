"""gplq_record: record ROS 2 topics into a rosbag2 bag (mcap by default) with ``rosbags``.

Messages are stored as received (raw CDR from rclpy ``raw=True`` subscriptions), with the
receipt time as the bag timestamp, as ``ros2 bag record`` does. Topics that do not exist
yet are subscribed as soon as they appear. Stops on Ctrl-C / SIGINT or after
``--duration`` seconds and writes metadata.yaml, so ``ros2 bag info`` and
``gplq_eval_bag`` can read the bag.

ROS arguments after ``--ros-args`` (what ``ros2 run`` and launch_ros append: ``-r __ns:=``,
``-r __node:=``, remappings, ``--params-file``) are passed to rclpy, as by every ROS node;
relative ``--topics`` names resolve in the node's namespace (``-r __ns:=/uav1``: ``camera/image_raw``
is ``/uav1/camera/image_raw``), remappings apply.
"""
import argparse
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.utilities import remove_ros_args

from gplq_ros.nodes.recorder import Recorder


def main(argv=None) -> int:
    """``argv``: the arguments without the program name (default: ``sys.argv[1:]``), ROS arguments included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog='gplq_record', description=__doc__.split('\n\n')[0],
                                 epilog='ROS arguments follow --ros-args, e.g. --ros-args -r __ns:=/uav1 '
                                        '-r __node:=recorder')
    ap.add_argument('--out', type=Path, required=True, help='bag directory to create')
    ap.add_argument('--topics', nargs='+', required=True,
                    help='topics to record; relative names are in the node\'s namespace (-r __ns:=...)')
    ap.add_argument('--duration', type=float, default=None, help='seconds to record (default: until Ctrl-C)')
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    try:   # rcl's own parser (rclpy.init's): it rejects a malformed rule after --ros-args
        own = remove_ros_args(['gplq_record', *argv])[1:]
    except Exception as e:
        ap.error(f'ROS arguments {argv[argv.index("--ros-args"):] if "--ros-args" in argv else []}: {e}')
    args = ap.parse_args(own)
    rclpy.init(args=['gplq_record', *argv])   # remappings, -r __ns:=, -r __node:=, --log-level, ...
    node = rclpy.create_node('gplq_record')
    try:
        rec = Recorder(node, args.out, args.topics, args.storage)
    except (FileExistsError, ValueError) as e:
        print(f'gplq_record: error: {e}', file=sys.stderr)
        node.destroy_node()
        rclpy.shutdown()
        return 2
    rec.discover()
    node.create_timer(0.5, rec.discover)
    end = time.monotonic() + args.duration if args.duration else None
    try:
        while rclpy.ok() and (end is None or time.monotonic() < end):
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rec.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    missing = [t for t in rec.wanted if t not in rec.conns]
    print(f'gplq_record: {args.out}: ' + ', '.join(f'{t} {n}' for t, n in rec.counts.items())
          + (f'; never seen: {missing}' if missing else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
