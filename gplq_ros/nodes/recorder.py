"""Recording ROS 2 topics into a rosbag2 bag with ``rosbags`` (``gplq_record``): messages
are stored as received (raw CDR from rclpy ``raw=True`` subscriptions), with the receipt
time as the bag timestamp, as ``ros2 bag record`` does; topics that do not exist yet are
subscribed as soon as they appear (``discover``). Topic names are resolved as by any ROS
node (relative names in the node's namespace, remappings applied) and recorded under the
fully qualified name."""
import importlib
from pathlib import Path

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore


def message_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


class Recorder:
    def __init__(self, node, out: Path, topics, storage: str = 'mcap'):
        out = Path(out)
        wanted = []
        for t in topics:   # fully qualified, as the graph reports them: relative names in the node's namespace
            try:
                wanted.append(node.resolve_topic_name(t))
            except Exception as e:
                raise ValueError(f'--topics {t!r}: not a ROS topic name ({e})') from None
        if out.exists():
            raise FileExistsError(f'--out {out} exists; rosbag2 bags are directories that are never overwritten')
        out.parent.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(out, version=8, storage_plugin=StoragePlugin.MCAP if storage == 'mcap'
                             else StoragePlugin.SQLITE3)
        self.writer.open()
        self.wanted = list(dict.fromkeys(wanted))
        self.conns, self.subs, self.counts = {}, {}, {}
        self.out = out

    def discover(self) -> None:
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
