"""The bringup without rclpy or torch: the node graph defined once (``description``, used by
``launch/drone.launch.py`` and ``gplq_up``), running it as processes (``processes``) and
evaluating its bags (``bag_report``)."""
