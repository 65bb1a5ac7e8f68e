"""What a drone needs, without torch, timm or rclpy: the ONNX Runtime / OpenVINO engine and artifact
reading, preprocessing and heads, the vocabulary, metrics, image codec and message layouts,
and the ROS-free logic of the nodes (newest-frame slot, statistics, drift, status, the
simulated flight)."""
