"""Test-side ROS 2 helpers: a real rclpy node in its own context that publishes and
collects, and node processes started the way the bringup starts them."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

REPO = Path(__file__).resolve().parents[2]


def qos(reliable: bool, depth: int = 10) -> QoSProfile:
    rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=rel)


def spin_until(executor, seconds: float, until=None, step: float = 0.05) -> bool:
    """Spin ``executor`` for up to ``seconds``; True as soon as ``until()`` is (or at the end
    when there is no condition)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=step)
        if until is not None and until():
            return True
    return until() if until is not None else True


class Harness:
    def __init__(self, name: str):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)

    def collect(self, msg_type, topic: str, reliable: bool = True, depth: int = 50) -> list:
        got = []
        self.node.create_subscription(msg_type, topic, got.append, qos(reliable, depth))
        return got

    def spin(self, seconds: float, until=None) -> bool:
        return spin_until(self.ex, seconds, until)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def start(argv, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0')
    # SIGINT at its default: stop() sends it, and a test run in the background inherits it ignored
    return subprocess.Popen(argv, env=env, stdout=open(log, 'wb'), stderr=subprocess.STDOUT, cwd=str(REPO),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def node_argv(module: str, *ros_args: str):
    return [sys.executable, '-m', module, '--ros-args', *ros_args]


def stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def vm_kb(pid: int, key: str = 'VmRSS') -> int:
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
    raise KeyError(key)
