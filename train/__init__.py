"""DermEdge workstation training (Keras 3, any backend)."""
