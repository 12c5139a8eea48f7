"""Workstation side: Keras checkpoint -> gated full-integer int8 TFLite model + card.json."""
