"""What the screenshot scripts share: letting a dock finish its work before the picture."""

from __future__ import annotations

import time
from typing import Any


def settle(app: Any, widget: Any, timeout: float = 300.0) -> None:
    """Process Qt events until ``widget`` is no longer busy (at most ``timeout`` s), then a
    little longer so that the layers are drawn."""
    t0 = time.time()
    while widget.busy and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)
