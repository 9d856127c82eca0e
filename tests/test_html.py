"""The book as a reader meets it: every page of the built HTML loaded in headless Chromium at
1280 x 900, with no MathJax error, every image loaded, no code cell, output or code block wider
than its column, and a Colab button on every chapter that opens that chapter's notebook.

The browser tests skip where no Chromium (or Chrome) and its driver are installed; the static
check of line lengths in the notebooks always runs. The column widths below were measured in
that browser: sphinx-book-theme sets code in 14 px monospace, 8.43 px per character.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML: the book build needs it

from book_pages import ROOT, toc_files  # noqa: E402  (needs yaml)

# Characters of monospace that fit the column at 1280 px (the text area of a `pre`).
CODE_COLUMN = 75  # a code cell's source: 640 px
HIDDEN_CODE_COLUMN = 73  # a `hide-input` or `hide-cell` cell's source, once opened: 622 px
OUTPUT_COLUMN = 76  # a stored text output (stream, text/plain): 644 px
HIDDEN_OUTPUT_COLUMN = 73  # the output of a `hide-cell` or `hide-output` cell, once opened
HIDES_INPUT = {"hide-input", "hide-cell"}
HIDES_OUTPUT = {"hide-output", "hide-cell"}
FENCE_COLUMN = 76  # a code block in the prose (```bash ...): 642 px

# What myst-nb renders of a cell's output, first match wins (its HTML priority list).
RICHER_THAN_TEXT = (
    "application/vnd.jupyter.widget-view+json",
    "application/javascript",
    "text/html",
    "image/svg+xml",
    "image/png",
    "image/jpeg",
    "text/markdown",
    "text/latex",
)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
VIEWPORT = (1280, 900)
MATHJAX_CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/mathjax@3/es5/([\w.-]+\.js)")
INSTALL_BROWSER = (
    "install Chromium and its driver (Debian: `apt-get install chromium chromium-driver`; "
    "Ubuntu: Google Chrome and chromedriver) and the Python packages in requirements.txt "
    "(selenium, django-static-mathjax)"
)


def chapters():
    """The pages of the book that are notebooks: the chapters."""
    return [name for name in toc_files() if (ROOT / f"{name}.ipynb").exists()]


def colab_url(name):
    """The Colab address of the chapter ``name``, from the repository named in _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].removeprefix("https://github.com/").strip("/")
    branch = config["repository"].get("branch", "main")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{name}.ipynb"


# --------------------------------------------------------------------------------------
# static: the longest line of every cell and output, counted in the notebooks
# --------------------------------------------------------------------------------------


def text(value):
    return "".join(value) if isinstance(value, list) else value


def widest_line(value):
    """``(width, line)`` of the widest line of ``value``, tabs expanded, ANSI colours removed."""
    lines = ANSI_ESCAPE.sub("", text(value)).expandtabs(8).split("\n")
    line = max(lines, key=len)
    return len(line), line


def rendered_text(output):
    """The text a stored output shows on the page, or ``None`` when it shows something else."""
    if output["output_type"] == "stream":
        return output["text"]
    if output["output_type"] == "error":
        return "\n".join(output["traceback"])
    data = output.get("data", {})
    if any(mime in data for mime in RICHER_THAN_TEXT):
        return None
    return data.get("text/plain")


def fences(markdown):
    """The lines of every fenced code block of a Markdown cell, as ``(info, lines)``. MyST
    directives other than code blocks (```{math}, ```{note}, ...) are not code."""
    blocks, block, opening = [], None, None
    for line in markdown.split("\n"):
        match = re.match(r"^\s*(`{3,}|~{3,})\s*(.*)$", line)
        if block is None and match:
            opening, info = match.group(1), match.group(2).strip()
            block = (info, [])
        elif block is not None and line.strip() == opening:
            blocks.append(block)
            block = None
        elif block is not None:
            block[1].append(line)
    code = []
    for info, lines in blocks:
        directive = re.match(r"\{([\w-]+)\}", info)
        if directive is None or directive.group(1) in ("code-block", "code", "sourcecode"):
            code.append((info, lines))
    return code


def cells(name):
    return json.loads((ROOT / f"{name}.ipynb").read_text())["cells"]


def too_wide(width, line, limit):
    return f"{width} > {limit} characters: {line.strip()[:60]!r}"


@pytest.mark.parametrize("name", chapters())
def test_code_cells_fit_the_column(name):
    code = [c for c in cells(name) if c["cell_type"] == "code"]
    wide = []
    for number, cell in enumerate(code, 1):
        tags = cell["metadata"].get("tags", [])
        if "remove-input" in tags or "remove-cell" in tags or not text(cell["source"]):
            continue
        limit = HIDDEN_CODE_COLUMN if HIDES_INPUT & set(tags) else CODE_COLUMN
        width, line = widest_line(cell["source"])
        if width > limit:
            wide.append(f"  code cell {number}: {too_wide(width, line, limit)}")
    assert not wide, (
        f"{name}: {len(wide)} of {len(code)} code cells have a line wider than the column at "
        f"1280 px ({CODE_COLUMN} characters, {HIDDEN_CODE_COLUMN} in a hidden cell):\n"
        + "\n".join(wide)
    )


@pytest.mark.parametrize("name", chapters())
def test_text_outputs_fit_the_column(name):
    with_output = [c for c in cells(name) if c["cell_type"] == "code" and c.get("outputs")]
    wide = []
    for number, cell in enumerate(with_output, 1):
        tags = cell["metadata"].get("tags", [])
        if "remove-output" in tags or "remove-cell" in tags:
            continue
        shown = [t for t in map(rendered_text, cell["outputs"]) if t is not None]
        if not shown:
            continue
        width, line = max(widest_line(t) for t in shown)
        limit = HIDDEN_OUTPUT_COLUMN if HIDES_OUTPUT & set(tags) else OUTPUT_COLUMN
        if width > limit:
            wide.append(f"  output of cell {number}: {too_wide(width, line, limit)}")
    assert not wide, (
        f"{name}: {len(wide)} of {len(with_output)} cells with outputs print a line wider than "
        f"the column at 1280 px ({OUTPUT_COLUMN} characters, {HIDDEN_OUTPUT_COLUMN} in a hidden cell):\n"
        + "\n".join(wide)
    )


@pytest.mark.parametrize("name", chapters())
def test_code_blocks_in_the_prose_fit_the_column(name):
    blocks = [b for c in cells(name) if c["cell_type"] == "markdown" for b in fences(text(c["source"]))]
    wide = []
    for info, lines in blocks:
        width, line = widest_line("\n".join(lines))
        if width > FENCE_COLUMN:
            wide.append(f"  ```{info} block: {too_wide(width, line, FENCE_COLUMN)}")
    assert not wide, (
        f"{name}: {len(wide)} of {len(blocks)} code blocks in the text have a line wider than "
        f"the column at 1280 px ({FENCE_COLUMN} characters):\n" + "\n".join(wide)
    )


def test_static_check_finds_a_wide_line():
    """The checks above measure what the page shows: tabs expanded, colours removed, the
    text of a plot's output not counted, a directive's body not taken for code."""
    assert widest_line(["a\tb\n", "\x1b[31m" + "x" * 10 + "\x1b[0m"]) == (10, "x" * 10)
    assert widest_line("\tz")[0] == 9
    plot = {"output_type": "display_data", "data": {"image/png": "", "text/plain": "y" * 200}}
    assert rendered_text(plot) is None
    stream = {"output_type": "stream", "name": "stdout", "text": ["ok\n", "z" * 90]}
    assert widest_line(rendered_text(stream))[0] == 90 > OUTPUT_COLUMN
    markdown = "text\n```bash\npython -m x\n```\n\n```{math}\n" + "q" * 200 + "\n```\n````{note}\nn\n````"
    assert fences(markdown) == [("bash", ["python -m x"])]


# --------------------------------------------------------------------------------------
# the browser: every page of the built book in headless Chromium
# --------------------------------------------------------------------------------------


def find_browser():
    """``(browser, driver)`` executables, or a reason why there are none."""
    browser = next(
        (
            shutil.which(name)
            for name in ("chromium", "google-chrome", "google-chrome-stable", "chromium-browser")
            if shutil.which(name)
        ),
        None,
    )
    driver = shutil.which("chromedriver")
    if driver is None and os.environ.get("CHROMEWEBDRIVER"):
        candidate = Path(os.environ["CHROMEWEBDRIVER"]) / "chromedriver"
        driver = str(candidate) if candidate.exists() else None
    if browser is None or driver is None:
        missing = "Chromium" if browser is None else "chromedriver"
        return None, f"no headless browser ({missing} not found): {INSTALL_BROWSER}"
    return (browser, driver), None


@pytest.fixture(scope="module")
def html(built_book, tmp_path_factory):
    """The book built once for this module, with MathJax served from the installed copy
    (the pages load it from a CDN, which a test machine may not reach)."""
    try:
        import mathjax  # django-static-mathjax: MathJax 3.2.2's files
    except ImportError:
        pytest.skip(f"MathJax 3 is not installed: {INSTALL_BROWSER}")
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    root = tmp_path_factory.mktemp("html") / "html"
    shutil.copytree(built_book, root)  # the pages are rewritten: a copy of the built book
    for page in root.rglob("*.html"):
        source = page.read_text()
        local = MATHJAX_CDN.sub(lambda m: (es5 / m.group(1)).as_uri(), source)
        if local != source:
            page.write_text(local)
    return root


@pytest.fixture(scope="module")
def browser():
    found, reason = find_browser()
    if found is None:
        pytest.skip(reason)
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed: {INSTALL_BROWSER}")
    binary, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="effconv-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as error:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"{binary} did not start ({error.msg}): {INSTALL_BROWSER}")
    width, height = VIEWPORT
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# Waits for MathJax (when the page loads it) and for every image, lazy ones included.
SETTLE = """
const done = arguments[arguments.length - 1];
const started = Date.now();
function images() {
  const all = [...document.images];
  all.forEach(img => { img.loading = 'eager'; });
  return Promise.all(all.map(img => img.complete ? null :
    new Promise(resolve => { img.onload = img.onerror = resolve; })));
}
function mathjax() {
  if (!document.querySelector('script[src*="mathjax"]')) return Promise.resolve('no MathJax');
  return new Promise(resolve => {
    (function wait() {
      if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
        MathJax.startup.promise.then(() => resolve('typeset'), e => resolve('failed: ' + e));
      } else if (Date.now() - started > 30000) {
        resolve('MathJax did not load');
      } else {
        setTimeout(wait, 50);
      }
    })();
  });
}
Promise.all([mathjax(), images()]).then(([math]) => done(math));
"""

# What a reader would see wrong, measured after every toggle is opened.
MEASURE = """
document.querySelectorAll('details').forEach(d => { d.open = true; });
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const column = article.getBoundingClientRect();
const wide = el => el.scrollWidth > el.clientWidth + 0.5 ||
  el.getBoundingClientRect().right > column.right + 0.5;
const widest = el => el.textContent.split('\\n')
  .reduce((a, b) => (b.length > a.length ? b : a), '').trim().slice(0, 60);
const px = el => `${el.scrollWidth} px in ${el.clientWidth} px`;
const cells = [...article.querySelectorAll('div.cell')];
const code = cells.filter(c => c.querySelector('.cell_input pre'));
const outputs = cells.filter(c => c.querySelector('.cell_output > *'));
const wideCode = code.map(c => c.querySelector('.cell_input pre'))
  .filter(wide).map(pre => `${px(pre)}: ${widest(pre)}`);
const wideOutputs = [];
for (const cell of outputs) {
  const parts = [...cell.querySelectorAll('.cell_output > *, .cell_output pre, .cell_output table')];
  const over = parts.find(wide);
  if (over) wideOutputs.push(`${px(over)}: ${widest(over)}`);
}
const prose = [...article.querySelectorAll('pre')].filter(pre => !pre.closest('div.cell'));
const wideProse = prose.filter(wide).map(pre => `${px(pre)}: ${widest(pre)}`);
const tables = [...article.querySelectorAll('table')].filter(t => !t.closest('div.cell'));
const wideTables = tables.filter(t => wide(t) || (t.parentElement && wide(t.parentElement)))
  .map(t => `${t.scrollWidth} px: ${widest(t)}`);
const math = [...article.querySelectorAll('span.math, div.math')];
return {
  mathErrors: [...document.querySelectorAll('mjx-merror')]
    .map(e => e.getAttribute('data-mjx-error') || e.textContent),
  mathCount: math.length,
  untypeset: math.filter(m => !m.querySelector('mjx-container')).map(widest),
  brokenImages: [...document.images].filter(img => !(img.naturalWidth > 0))
    .map(img => img.getAttribute('src')),
  imageCount: document.images.length,
  code: code.length, wideCode,
  outputs: outputs.length, wideOutputs,
  prose: prose.length, wideProse,
  tables: tables.length, wideTables,
  colab: [...document.querySelectorAll('a[href^="https://colab.research.google.com/"]')]
    .map(a => a.href),
};
"""


def measure(browser, page):
    browser.get(page.as_uri())
    math = browser.execute_async_script(SETTLE)
    return math, browser.execute_script(MEASURE)


def problems(name, math, seen):
    """Everything on the page ``name`` that a reader would find broken, one line each."""
    found = []
    if math not in ("typeset", "no MathJax"):
        found.append(f"MathJax: {math}")
    found += [f"MathJax error: {e}" for e in seen["mathErrors"]]
    if seen["untypeset"]:
        found.append(f"{len(seen['untypeset'])} formulas not typeset, first: {seen['untypeset'][0]!r}")
    found += [f"image did not load: {src}" for src in seen["brokenImages"]]
    for key, total, what in (
        ("wideCode", "code", "code cells"),
        ("wideOutputs", "outputs", "cells' outputs"),
        ("wideProse", "prose", "code blocks in the text"),
        ("wideTables", "tables", "tables in the text"),
    ):
        if seen[key]:
            found.append(
                f"{len(seen[key])} of {seen[total]} {what} wider than the column:\n"
                + "\n".join(f"    {line}" for line in seen[key])
            )
    if name in chapters():
        expected = colab_url(name)
        if not seen["colab"]:
            found.append(f"no Colab launch link (expected {expected})")
        found += [f"Colab link {link} is not {expected}" for link in seen["colab"] if link != expected]
    return found


@pytest.mark.parametrize("name", toc_files())
def test_page_reads_in_a_browser(browser, html, name):
    page = html / f"{name}.html"
    assert page.exists(), f"{name} did not render"
    math, seen = measure(browser, page)
    found = problems(name, math, seen)
    assert not found, f"{name} at {VIEWPORT[0]}x{VIEWPORT[1]}:\n" + "\n".join(f"  {p}" for p in found)


def test_browser_check_sees_what_a_reader_sees(browser, tmp_path):
    """The checks can fail: a page with a wide code cell, a wide output, a broken image,
    a TeX error and no Colab link is reported on every count."""
    try:
        import mathjax
    except ImportError:
        pytest.skip(f"MathJax 3 is not installed: {INSTALL_BROWSER}")
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-mml-chtml.js"
    long, short = "x = " + "1 + " * 40 + "1", "y = 2"
    page = tmp_path / "page.html"
    page.write_text(
        f"""<!DOCTYPE html><html><head><script defer src="{es5.as_uri()}"></script></head>
<body><main><article class="bd-article" style="width: 600px">
<div class="cell"><div class="cell_input"><pre>{long}</pre></div>
<div class="cell_output"><pre>{long}</pre></div></div>
<div class="cell"><div class="cell_input"><pre>{short}</pre></div></div>
<img src="missing.png"><img src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7">
<span class="math">\\(\\frac{{1}}{{2}}\\)</span><span class="math">\\(\\frac{{1}}\\)</span>
</article></main></body></html>"""
    )
    math, seen = measure(browser, page)
    assert math == "typeset"
    assert len(seen["mathErrors"]) == 1 and seen["mathCount"] == 2
    assert seen["brokenImages"] == ["missing.png"] and seen["imageCount"] == 2
    assert (seen["code"], len(seen["wideCode"])) == (2, 1)
    assert (seen["outputs"], len(seen["wideOutputs"])) == (1, 1)
    name = chapters()[0]
    found = problems(name, math, seen)
    assert any(p.startswith("MathJax error") for p in found)
    assert any(p.startswith("1 of 2 code cells wider") for p in found)
    assert any(p.startswith("no Colab launch link") for p in found)
