"""DermEdge device side: runs on a Raspberry Pi without TensorFlow."""
