"""gplq_ros: GPLQ-quantized DINOv2 features for onboard drone perception.

Packages, each importing only the ones listed before it (tested):
``onboard``  what a drone runs: ONNX Runtime / OpenVINO engine, artifact reading, heads, codecs,
             message layouts, drift/statistics/status logic (numpy, OpenCV, onnxruntime,
             optionally openvino, ROS message classes; never torch, timm or rclpy);
``offline``  torch + timm: backbone, quantized model, calibration, export, the Python API
             (``offline.api``) -- imports ``onboard``;
``bringup``  the ROS node graph defined once, its processes, bag reports (no rclpy,
             no torch) -- imports ``onboard``;
``nodes``    rclpy nodes that wire messages to ``onboard`` -- imports ``onboard``;
``tools``    console scripts: argparse -> config -> one library call -> print.
"""

__version__ = '0.1.0'
