"""Open every chapter of the built book in headless Chromium and check what
a reader would see.

For each chapter listed in ``_toc.yml`` the page is served from
``_build/html`` on 127.0.0.1, loaded in Debian's ``chromium``
(``--dump-dom`` after MathJax has run) and must have:

- executed outputs (``div.cell_output``) and no error output (no traceback
  in an output);
- at least one figure (an ``<img>`` in an output, whose file exists in the
  built site);
- rendered math: MathJax's ``<mjx-container>`` elements in the DOM after
  load, with MathJax served from the site itself (no CDN);
- no script loaded from another site (the book reads offline; progress-bar
  widgets add none);
- at least one citation linking to the references page;
- Colab and Binder launch links pointing at this chapter's notebook in the
  repository;
- code that fits the page: in a 1280-px window, at most
  ``MAX_OVERFLOW_SHARE`` of the visible code and output blocks
  (``div.cell_input pre``, ``div.cell_output pre``) are wider than their
  column (a horizontal scroll bar). The server adds a small script to each
  page that measures ``scrollWidth`` against ``clientWidth`` after load and
  writes the counts into the DOM, which ``--dump-dom`` then carries out.

Usage: ``python tools/check_built_pages.py _build/html``. Exit status 1
lists every failed check.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bs4 import BeautifulSoup
from project import chapter_files, repository_url  # tools/project.py

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=30000",
    "--window-size=1280,900",
    "--hide-scrollbars",
]

#: The test server's own addresses: a script from there is not remote.
LOCAL_ORIGINS = ("http://127.0.0.1", "http://localhost")

#: At most this share of a page's code and output blocks may overflow.
MAX_OVERFLOW_SHARE = 0.10

#: Added to every served page: after load, count the visible code and
#: output blocks and those wider than their column, and keep the widest
#: line of each overflowing block (for the report).
MEASURE_OVERFLOW = b"""<script>
window.addEventListener("load", () => setTimeout(() => {
  const blocks = [...document.querySelectorAll(
    "div.cell_input pre, div.cell_output pre")].filter(
    (block) => block.clientWidth > 0);
  const wide = blocks.filter(
    (block) => block.scrollWidth > block.clientWidth + 1);
  const report = document.createElement("div");
  report.id = "overflow-report";
  report.dataset.blocks = blocks.length;
  report.dataset.overflowing = wide.length;
  const code = document.querySelector("div.cell_input pre");
  if (code) {  // how many characters a code line can hold
    const probe = document.createElement("span");
    probe.textContent = "x".repeat(100);
    code.appendChild(probe);
    const style = getComputedStyle(code);
    const inner = code.clientWidth - parseFloat(style.paddingLeft)
      - parseFloat(style.paddingRight);
    report.dataset.columns = Math.floor(
      inner / (probe.getBoundingClientRect().width / 100));
    probe.remove();
  }
  report.textContent = JSON.stringify(wide.map((block) =>
    block.textContent.split("\\n").reduce(
      (a, b) => (b.length > a.length ? b : a), "")));
  document.body.appendChild(report);
}, 1000));
</script>"""


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the duration of the
    block; yield the base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site quietly, adding MEASURE_OVERFLOW to each page."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", MEASURE_OVERFLOW + b"</body>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def rendered_dom(browser: str, url: str) -> str:
    """The DOM of ``url`` after load and after scripts (MathJax) ran, as
    Chromium serialises it."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(
            f"chromium failed on {url} (exit {result.returncode}): {result.stderr[-2000:]}"
        )
    return result.stdout


def check_page(html: str, page: Path, chapter: str, repository_url: str) -> list[str]:
    """Every problem found on one chapter page (empty when the page is
    fine)."""
    soup = BeautifulSoup(html, "html.parser")
    problems = []
    outputs = soup.select("div.cell_output")
    if not outputs:
        problems.append("no executed outputs (div.cell_output)")
    for output in outputs:
        if "Traceback (most recent call last)" in output.get_text():
            problems.append("an output holds a traceback")
            break
    images = [img for output in outputs for img in output.find_all("img")]
    if not images:
        problems.append("no figure in the outputs")
    for img in images:
        src = img.get("src", "")
        if not src.startswith("data:") and not (page.parent / src).resolve().is_file():
            problems.append(f"figure {src} is missing from the built site")
    math = soup.find_all("mjx-container")
    if not math:
        problems.append("no rendered math (no mjx-container after load)")
    mathjax_scripts = [
        s.get("src", "") for s in soup.find_all("script") if "mathjax" in s.get("src", "").lower()
    ]
    # MathJax loads its extensions from the page's own origin at run time
    if not mathjax_scripts or any(
        "://" in src and not src.startswith(LOCAL_ORIGINS) for src in mathjax_scripts
    ):
        problems.append(f"MathJax must be served by the site itself, found {mathjax_scripts}")
    remote_scripts = [
        s["src"]
        for s in soup.find_all("script", src=True)
        if "://" in s["src"] and not s["src"].startswith(LOCAL_ORIGINS)
    ]
    if remote_scripts:
        problems.append(f"scripts loaded from another site: {remote_scripts}")
    citations = [
        a
        for a in soup.find_all("a", href=True)
        if a["href"].split("#")[0].endswith("references.html") and "#" in a["href"]
    ]
    if not citations:
        problems.append("no citation linking to the references page")
    repo = repository_url.removeprefix("https://github.com/")
    expected_links = {
        "Colab": f"https://colab.research.google.com/github/{repo}/blob/main/{chapter}.ipynb",
        "Binder": f"https://mybinder.org/v2/gh/{repo}/main?urlpath=tree/{chapter}.ipynb",
    }
    hrefs = {a["href"] for a in soup.find_all("a", href=True)}
    for service, link in expected_links.items():
        if link not in hrefs:
            problems.append(f"no {service} link {link}")
    blocks, wide_lines, columns = overflow(soup)
    share = len(wide_lines) / max(blocks, 1)
    if blocks == 0:
        problems.append("no overflow report: the measuring script did not run")
    elif share > MAX_OVERFLOW_SHARE:
        examples = "; ".join(repr(line[:90]) for line in wide_lines[:3])
        problems.append(
            f"{len(wide_lines)} of {blocks} code and output blocks "
            f"({share:.0%}) overflow at 1280 px, more than "
            f"{MAX_OVERFLOW_SHARE:.0%}; widest lines: {examples}"
        )
    print(
        f"{chapter}: {len(outputs)} outputs, {len(images)} figures, "
        f"{len(math)} math elements, {len(citations)} citation links, "
        f"{len(wide_lines)}/{blocks} blocks overflow, code lines of {columns} characters fit"
    )
    for line in wide_lines:
        print(f"    overflows: {line[:100]!r}")
    return problems


def overflow(soup: BeautifulSoup) -> tuple[int, list[str], int | None]:
    """(visible code and output blocks, widest line of each one that
    overflows, characters a code line can hold), from the report
    MEASURE_OVERFLOW wrote into the DOM."""
    report = soup.find(id="overflow-report")
    if report is None:
        return 0, [], None
    columns = report.get("data-columns")
    return (
        int(report["data-blocks"]),
        json.loads(report.get_text()),
        int(columns) if columns else None,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    site = Path(argv[0]).resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: install Debian's chromium package (apt-get install chromium)")
        return 2
    url = repository_url()
    failures = []
    with serve(site) as base_url:
        for chapter in chapter_files():
            page = site / f"{chapter}.html"
            if not page.is_file():
                failures.append(f"{chapter}: page {page} was not built")
                continue
            html = rendered_dom(browser, f"{base_url}/{chapter}.html")
            failures += [
                f"{chapter}: {problem}" for problem in check_page(html, page, chapter, url)
            ]
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"built pages: {len(chapter_files())} chapters checked, {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
