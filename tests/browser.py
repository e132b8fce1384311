"""A real headless Chromium for page tests (Debian's chromium + chromium-driver, selenium)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = "/usr/bin/chromedriver"


def chromium(width: int = 1280, height: int = 1400) -> Any:
    """A headless Chromium that records the page's console (skips when none is installed;
    `make chromium` installs it, and `make test` does so first)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary = next((b for b in CHROMIUM if Path(b).exists()), shutil.which("chromium"))
    driver = DRIVER if Path(DRIVER).exists() else shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium and chromium-driver are not installed (make chromium)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system's driver, never one selenium-manager would fetch.
    return webdriver.Chrome(service=Service(driver), options=options)


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """Console messages at error level (uncaught exceptions, failed loads, console.error)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def pixel_std(png: bytes) -> float:
    """Standard deviation of the grey levels of a PNG: ~0 for a blank page."""
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return float(grey.std())
