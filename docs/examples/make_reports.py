"""Make the report examples the docs show: a real `kiln demo --fast` run, its two HTML reports,
and a screenshot of each.

    .venv/bin/python docs/examples/make_reports.py [--out docs/assets/examples]

The demo trains, compiles, serves, shifts the traffic, evaluates (writing the evaluation
report), retrains and promotes, in a temporary KILN_HOME, exactly as `just demo` does; this
script only copies what it wrote. Where Chromium is installed (`apt-get install chromium`), each
page is also rendered by headless Chromium to a PNG, reduced to a 256-colour palette so the
committed assets stay small. Commit the files it writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPORTS = ("demo.html", "demo-before-retraining.html")
"""What `kiln demo` writes under KILN_HOME/reports (demo.html links to the other by name)."""

WINDOW = {"demo.html": (1000, 1000), "demo-before-retraining.html": (1000, 1800)}
"""Screenshot sizes (width, height): each page's first screens, where its tables and plots are."""


def run_demo(home: Path) -> None:
    kiln = Path(sys.executable).with_name("kiln")
    env = {**os.environ, "KILN_HOME": str(home)}
    log = home / "make_reports.log"
    print(f"running kiln demo --fast in {home} (a few minutes; output in {log})", flush=True)
    with log.open("w") as out:
        argv = [str(kiln), "demo", "--fast"]
        done = subprocess.run(argv, check=False, env=env, stdout=out, stderr=out)
    if done.returncode != 0:
        sys.exit(
            f"kiln demo failed (exit {done.returncode}); see {log}:\n{log.read_text()[-3000:]}"
        )


def screenshot(chromium: str, page: Path, png: Path, size: tuple[int, int]) -> None:
    argv = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "assets/examples")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-docs-") as tmp:
        home = Path(tmp)
        run_demo(home)
        for name in REPORTS:
            shutil.copyfile(home / "reports" / name, args.out / name)
            print(f"wrote {args.out / name}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed: no screenshots (apt-get install chromium)")
        return
    for name in REPORTS:
        png = args.out / name.replace(".html", ".png")
        screenshot(chromium, args.out / name, png, WINDOW[name])
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
