"""Measured figures of the fault tests, for docs/RELIABILITY.md: appended as JSON lines to the file named by
LIVECDN_FAULT_FIGURES when it is set (nothing is written otherwise)."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def record(fault: str, **figures: Any) -> None:
    print(f"[figures] {fault}: {figures}")
    path = os.environ.get("LIVECDN_FAULT_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"fault": fault, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}) + "\n")
