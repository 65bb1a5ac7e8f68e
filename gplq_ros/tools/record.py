"""gplq_record: record ROS 2 topics into a rosbag2 bag (mcap by default) with ``rosbags``.

Messages are stored as received (raw CDR from rclpy ``raw=True`` subscriptions), with the
receipt time as the bag timestamp, as ``ros2 bag record`` does. Topics that do not exist
yet are subscribed as soon as they appear. Stops on Ctrl-C / SIGINT or after
``--duration`` seconds and writes metadata.yaml, so ``ros2 bag info`` and
``gplq_eval_bag`` can read the bag.
"""
import argparse
import importlib
import sys
import time
from pathlib import Path


def message_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


class Recorder:
    def __init__(self, node, out: Path, topics, storage: str = 'mcap'):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore
        out = Path(out)
        if out.exists():
            raise FileExistsError(f'--out {out} exists; rosbag2 bags are directories that are never overwritten')
        out.parent.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(out, version=8, storage_plugin=StoragePlugin.MCAP if storage == 'mcap'
                             else StoragePlugin.SQLITE3)
        self.writer.open()
        self.wanted = list(dict.fromkeys(topics))
        self.conns, self.subs, self.counts = {}, {}, {}
        self.out = out

    def discover(self) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        known = dict(self.node.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.subs or topic not in known:
                continue
            type_name = known[topic][0]
            try:
                cls = message_class(type_name)
                conn = self.writer.add_connection(topic, type_name, typestore=self.typestore)
            except Exception as e:  # a type this typestore/rclpy does not know: say so, record the rest
                self.node.get_logger().error(f'cannot record {topic} ({type_name}): {e}')
                self.subs[topic] = None
                continue
            self.conns[topic] = conn
            self.counts[topic] = 0
            # best effort matches reliable and best-effort publishers alike
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
            self.subs[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self.write(t, raw), qos, raw=True)
            self.node.get_logger().info(f'recording {topic} ({type_name})')

    def write(self, topic: str, raw: bytes) -> None:
        self.writer.write(self.conns[topic], self.node.get_clock().now().nanoseconds, raw)
        self.counts[topic] += 1

    def close(self) -> None:
        self.writer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_record', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, required=True, help='bag directory to create')
    ap.add_argument('--topics', nargs='+', required=True)
    ap.add_argument('--duration', type=float, default=None, help='seconds to record (default: until Ctrl-C)')
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    args = ap.parse_args(argv)
    import rclpy
    from rclpy.executors import ExternalShutdownException
    rclpy.init(args=['--ros-args'])
    node = rclpy.create_node('gplq_record')
    try:
        rec = Recorder(node, args.out, args.topics, args.storage)
    except FileExistsError as e:
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
