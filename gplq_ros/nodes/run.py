"""The main() shared by the nodes: init, construct, spin, clean shutdown."""
import rclpy
from rclpy.executors import ExternalShutdownException


def run_node(factory, argv=None) -> int:
    """A failure while constructing the node (bad parameter) or, for a managed node with
    ``autostart``, while configuring it (missing or corrupt model file) is logged as one fatal
    line naming the cause, and the process exits with status 1. A managed node without
    autostart waits, unconfigured, for its lifecycle manager."""
    rclpy.init(args=argv)
    node = None
    try:
        try:
            node = factory()
            failed = node.start() if hasattr(node, 'start') else None
        except Exception as e:  # startup problems only; the message names the cause
            failed = f'{type(e).__name__}: {e}'
        if failed:
            rclpy.logging.get_logger(getattr(factory, 'NODE_NAME', 'gplq_ros')).fatal(f'cannot start: {failed}')
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
