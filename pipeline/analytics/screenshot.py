"""A PNG of an HTML page as headless Chromium renders it (``threadline report --screenshot``).

Chromium is not a Python package: Debian's ``chromium`` (``apt-get install chromium``) or any
``chromium`` / ``google-chrome`` on PATH.  It runs with a new empty profile, no network of its
own (no component updates, sync or background requests) and no sandbox (it runs as root in
containers), on a tall window whose empty bottom is cut off afterwards, so the PNG holds the
whole page up to ``max_height`` pixels.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1")


class ScreenshotError(Exception):
    pass


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_command(chromium: str, page: Path, out: Path, profile: Path, width: int, height: int) -> list[str]:
    return [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
            f"--window-size={width},{height}", page.resolve().as_uri()]


def _trim_bottom(path: Path, margin: int = 24) -> tuple[int, int]:
    """Cut the page's empty bottom (the window is taller than the page); returns the size."""
    from PIL import Image, ImageChops

    with Image.open(path) as image:
        image = image.convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    bottom = min(image.height, (box[3] if box else 0) + margin)
    image = image.crop((0, 0, image.width, max(bottom, 1)))
    image.save(path, optimize=True)
    return image.size


def screenshot(page: Path, out: Path, *, width: int = 1200, max_height: int = 16_000,
               timeout_s: float = 90.0) -> tuple[int, int]:
    """Render ``page`` (a local HTML file) into the PNG ``out``; returns its (width, height)."""
    chromium = find_chromium()
    if chromium is None:
        raise ScreenshotError("no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + " on PATH): "
                              "install it, e.g. `apt-get install -y chromium` on Debian")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="threadline-chromium-") as folder:
        shot = Path(folder) / "page.png"
        command = chromium_command(chromium, page, shot, Path(folder) / "profile", width, max_height)
        # Its own process group: on a timeout the browser and every helper process it started end.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, errors = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise ScreenshotError(f"Chromium took longer than {timeout_s:.0f} s to render {page}") from None
        if process.returncode != 0 or not shot.is_file():
            last = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ScreenshotError(f"Chromium failed (exit code {process.returncode}): {last[0]}")
        size = _trim_bottom(shot)
        shutil.move(shot, out)
    return size
