"""Managed (lifecycle) node base of the feature and monitor nodes.

Parameters are declared in the constructor; the model, engine, publishers, timers and worker
thread are made in ``on_configure`` and released in ``on_cleanup`` (and ``on_shutdown``);
the input subscriptions exist only while the node is active, so an inactive node does no
work and publishes no outputs (its /diagnostics keep coming, with ``lifecycle_state``). With
the parameter ``autostart`` (default true) the node configures and activates itself at
startup, so plain use (``ros2 run``, the launch file) stays one command; a lifecycle manager
sets it false and drives the transitions through the standard ``lifecycle_msgs`` services
(``~/change_state``, ``~/get_state``). A subclass implements ``declare()``, ``configure()``,
``activate()`` (create the subscriptions) and extends ``release()``.

The worker thread (``onboard.slot.SlotWorker``) lives from configure to cleanup, across
deactivate/activate: at deactivation the frame waiting in its slot is dropped, and a frame
inside the engine then gives no outputs; the worker publishes only under ``self.gate`` after
checking ``self.active``, so no output leaves the node after on_deactivate returned. A
parameter renamed in a release (``RENAMED``: old -> new) given under its old name stops the
node at construction with a message naming the new one (ROS would ignore it silently).
"""
import threading
from typing import Dict, List, Optional

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from gplq_ros.nodes.params import Params


class ManagedNode(LifecycleNode):
    NODE_NAME = ''
    RENAMED: Dict[str, str] = {}

    def __init__(self, **kw):
        super().__init__(self.NODE_NAME, **kw)
        old = sorted(set(self.RENAMED) & set(self._parameter_overrides))
        if old:
            raise ValueError(', '.join(f'parameter {n} was renamed {self.RENAMED[n]}' for n in old)
                             + f': update the parameter file (see config/{self.NODE_NAME}.yaml)')
        self.gate = threading.Lock()     # held while a worker publishes and while the state changes
        self.params = Params(self)
        self.autostart = self.params.declare('autostart', True, 'configure and activate at startup (false: wait '
                                             'for a lifecycle manager)', read_only=True)
        self.configure_error = ''
        self.state_label = 'unconfigured'
        self.inputs: List = []
        self.worker = self.timer = None     # made in configure(), with the publishers in self.publishers_
        self.publishers_: List = []
        self.declare()

    # -- subclass hooks ------------------------------------------------------------------
    def declare(self) -> None:
        raise NotImplementedError

    def configure(self) -> None:
        """Load resources, create publishers/timers/worker; raise with a clear message on failure."""
        raise NotImplementedError

    def activate(self) -> None:
        """Create the input subscriptions (append them to ``self.inputs``)."""
        raise NotImplementedError

    def deactivate(self) -> None:
        """After the inputs are gone: forget the work waiting for the worker (extend it for
        joins that hold inputs)."""
        if self.worker is not None:
            self.worker.slot.discard()

    def declare_diagnostics_period(self, what: str = '/diagnostics messages', lo: float = 0.05) -> float:
        return self.params.declare('diagnostics_period', 1.0, f'seconds between {what}', (lo, 60.0), read_only=True)

    def release(self) -> None:
        """Undo ``configure`` (safe on a partly configured node): stop the worker thread, destroy
        the timer and publishers; a subclass also drops its model."""
        if self.worker is not None:
            self.worker.stop()
        if self.timer is not None:
            self.destroy_timer(self.timer)
        for pub in self.publishers_:
            self.destroy_publisher(pub)
        self.publishers_, self.worker, self.timer = [], None, None

    # -- transitions ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state_label == 'active'

    @property
    def outputs_allowed(self) -> bool:
        """Whether a worker may publish now (read under ``self.gate``): active, not shutting down."""
        return self.context.ok() and self.active

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure()
        except Exception as e:   # a bad model/parameter: the transition fails, the node stays unconfigured
            self.configure_error = f'{type(e).__name__}: {e}'
            self.get_logger().error(f'configure failed: {self.configure_error}')
            self.release()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ''
        self.state_label = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate()
        self.state_label = 'active'
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self.gate:
            self.state_label = 'inactive'
        self._drop_inputs()
        self.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._teardown('unconfigured')

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._teardown('finalized')

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._teardown('unconfigured')

    def _drop_inputs(self) -> None:
        for sub in self.inputs:
            self.destroy_subscription(sub)
        self.inputs = []

    def _teardown(self, label: str) -> TransitionCallbackReturn:
        """Inputs first (no new frames), then the worker, timer, publishers and model."""
        with self.gate:
            self.state_label = label
        self._drop_inputs()
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def start(self) -> Optional[str]:
        """With ``autostart``: configure and activate; returns the configure error, if any."""
        if not self.autostart:
            return None
        self.trigger_configure()
        if self.state_label != 'inactive':
            return self.configure_error or 'configure failed'
        self.trigger_activate()
        return None

    def destroy_node(self):
        self._teardown('finalized')
        return super().destroy_node()
