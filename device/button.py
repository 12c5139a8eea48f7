"""An optional GPIO push button that saves a capture, for a screen with no keyboard (DRM overlay).

gpiozero comes with Raspberry Pi OS (``apt install python3-gpiozero``) and is imported only
when ``captures.button_gpio`` is set. No GPIO exists here: the tests pass a stand-in with
gpiozero ``Button``'s API (``Button(pin, pull_up=..., bounce_time=...)``, ``when_pressed``,
``close()``) as ``button_class``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

_log = logging.getLogger(__name__)

BOUNCE_S = 0.05  # a mechanical button chatters for a few milliseconds


class CaptureButton:
    """Calls ``on_press`` (which saves a capture) each time the button on ``pin`` is pressed.

    ``on_press`` errors are logged, never raised into gpiozero's thread.
    """

    def __init__(self, pin: int, on_press: Callable[[], object], *, button_class=None):
        self.pin = pin
        self._on_press = on_press
        self._button_class = button_class
        self._button = None

    def start(self) -> bool:
        """Claim the pin; False (with a warning) where gpiozero or the pin is not available."""
        cls = self._button_class
        if cls is None:
            try:
                from gpiozero import Button as cls
            except ImportError:
                _log.warning("captures.button_gpio is %d but gpiozero is not installed "
                             "(apt install python3-gpiozero): no capture button", self.pin)
                return False
        try:
            button = cls(self.pin, pull_up=True, bounce_time=BOUNCE_S)  # wired from the pin to ground
        except Exception as err:  # noqa: BLE001 - gpiozero raises its own errors for a busy or missing pin
            _log.warning("capture button on GPIO %d not available: %s", self.pin, err)
            return False
        button.when_pressed = self._pressed
        self._button = button
        _log.info("capture button on GPIO %d", self.pin)
        return True

    def _pressed(self, *_args) -> None:
        try:
            self._on_press()
        except Exception as err:  # noqa: BLE001 - a failed capture is reported, the button keeps working
            _log.warning("capture button: %s", err)

    def close(self) -> None:
        button, self._button = self._button, None
        if button is not None:
            button.close()
