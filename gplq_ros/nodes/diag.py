"""diagnostic_msgs helpers: one DiagnosticStatus from a level, message and key/values."""
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from gplq_ros.onboard.status import Status, worker_status


def status(name: str, hardware_id: str, level: int, message: str, values: dict) -> DiagnosticStatus:
    def fmt(v):
        if v is None:
            return 'nan'
        return f'{v:.4g}' if isinstance(v, float) else str(v)
    return DiagnosticStatus(level=bytes([int(level)]), name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=fmt(v)) for k, v in values.items()])


def array(stamp, statuses) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def status_name(node) -> str:
    """Distinct per vehicle: the namespace is part of the name."""
    return 'gplq_ros: ' + node.get_fully_qualified_name().lstrip('/')


def publish(node, publisher, node_status: Status, values: dict, worker) -> Status:
    """One DiagnosticArray with this node's status ``gplq_ros: <node's fully qualified name
    without the leading slash>`` (``gplq_ros: feature_node``, ``gplq_ros: uav1/feature_node``); the status
    includes the health of the node's worker thread (``onboard.slot.SlotWorker``).
    Returns the published (level, message)."""
    new_errors, last_error, alive = worker.health()
    level, message = worker_status(node_status, new_errors, last_error, alive)
    values = dict(values, worker_alive=alive, worker_errors=worker.errors, worker_last_error=last_error)
    publisher.publish(array(node.get_clock().now().to_msg(), [
        status(status_name(node), node.hardware_id, level, message, values)]))
    return level, message
