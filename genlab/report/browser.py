"""Look at a report the way a reader does, in headless Chromium: layout checks and screenshots.

`check_layout(page)` loads a copy of the page with a small script appended that measures, after every image has
loaded, whether the page is wider than the window and which images failed; Chromium prints the DOM
(`--dump-dom`) and the measurement is read back from it. `screenshot(page, png)` saves the whole page as a PNG.
Chromium is an optional, external program (Debian package `chromium`); nothing here runs without it.

    python -m genlab.report.browser RUN/report.html [--screenshot out.png] [--width 1280]
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs on `load` (after every <img> has loaded or failed). Written into the DOM, since --dump-dom prints the DOM.
_CHECK = """<script>
window.addEventListener("load", function () {
  var root = document.documentElement, vw = root.clientWidth;
  var imgs = Array.prototype.slice.call(document.images), wide = [];
  if (root.scrollWidth > vw) {
    document.querySelectorAll("body *").forEach(function (el) {
      var r = el.getBoundingClientRect();
      if (r.right > vw + 0.5 && wide.length < 8)
        wide.push(el.tagName.toLowerCase() + (el.className ? "." + el.className : "") + " right=" + Math.round(r.right));
    });
  }
  var out = {viewport: vw, innerWidth: window.innerWidth, scrollWidth: root.scrollWidth, height: root.scrollHeight,
    images: imgs.length, wide: wide,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.getAttribute("src"); })};
  var pre = document.createElement("pre");
  pre.id = "genlab-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (tried: " + ", ".join(BROWSERS) + "); on Debian/Ubuntu: "
                                "apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="genlab-chromium-") as profile:  # a private profile: runs never collide
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_layout(page: str | Path, *, width: int = 1280, height: int = 2000, timeout: float = 120) -> dict:
    """Render `page` in a `width` px wide window; returns {viewport, scrollWidth, height, images, broken, wide}.

    The page overflows sideways when scrollWidth > viewport; `broken` lists the src of every image that did not
    load (naturalWidth 0); `wide` names the elements that stick out, when any do.
    """
    page = Path(page).resolve()
    probe = page.with_name(f".{page.stem}.check.html")  # beside the page, so relative image paths resolve
    text = page.read_text()
    probe.write_text(text.replace("</body>", _CHECK + "</body>") if "</body>" in text else text + _CHECK)
    try:
        proc = _chromium([f"--window-size={width},{height}", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="genlab-check">(.*?)</pre>', proc.stdout, re.S)
    if m is None:
        raise RuntimeError(f"Chromium did not report the layout (exit {proc.returncode}); stderr:\n{proc.stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))


def screenshot(page: str | Path, png: str | Path, *, width: int = 1280, height: int | None = None,
               max_height: int = 12000, timeout: float = 120) -> Path:
    """Save `page` as a PNG `width` px wide; the whole page by default (its height measured first)."""
    page, png = Path(page).resolve(), Path(png).resolve()
    if height is None:
        height = min(max_height, int(check_layout(page, width=width, timeout=timeout)["height"]))
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _chromium([f"--window-size={width},{height}", "--hide-scrollbars", "--virtual-time-budget=10000",
                      f"--screenshot={png}", page.as_uri()], timeout)
    if not png.exists():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}); stderr:\n{proc.stderr[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m genlab.report.browser", description=__doc__.splitlines()[0])
    ap.add_argument("page", help="an HTML file, e.g. RUN/report.html")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--screenshot", help="also save the whole page as this PNG")
    args = ap.parse_args(argv)
    result = check_layout(args.page, width=args.width)
    print(json.dumps(result, indent=1))
    if args.screenshot:
        print(f"wrote {screenshot(args.page, args.screenshot, width=args.width)}")
    ok = result["scrollWidth"] <= result["viewport"] and not result["broken"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
