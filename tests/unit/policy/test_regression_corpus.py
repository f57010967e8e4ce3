"""Every statement of PostgreSQL's own regression SQL goes through ``classify``.

pglast's source distribution vendors libpg_query, whose ``test/sql/postgres_regress``
directory holds PostgreSQL's regression scripts (~230 files, ~49,000 statements
covering every statement type and most of the grammar). The classifier must never
raise and never return a statement without a category on any of them.

The sdist is downloaded once from PyPI into ``tests/.cache/`` (gitignored). Without
it the test fails rather than skips: a check that never ran must not count as passed.
"""

from __future__ import annotations

import hashlib
import html
import random
import re
import tarfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin

import pglast
import pytest
from pglast import parser

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.literals import mask, render, spans

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "pglast-sdist"
REGRESS_DIR = "libpg_query/test/sql/postgres_regress"
INDEX_URL = "https://pypi.org/simple/pglast/"


def _version() -> str:
    from importlib.metadata import version

    return version("pglast")


def _download_sdist(ver: str, dest: Path) -> None:
    """Fetch the sdist through PyPI's simple index (PEP 503) and check its sha256.

    Not ``pip download``: for an sdist pip prepares metadata, which builds pglast's
    build dependencies (Cython) from source and takes minutes.
    """
    index = urllib.request.urlopen(INDEX_URL, timeout=60).read().decode()
    name = f"pglast-{ver}.tar.gz"
    links = [h for h in re.findall(r'href="([^"]+)"', index) if h.split("#")[0].endswith(name)]
    if not links:
        raise ValueError(f"{name} is not listed at {INDEX_URL}")
    url, _, fragment = html.unescape(links[0]).partition("#")
    data = urllib.request.urlopen(urljoin(INDEX_URL, url), timeout=120).read()
    algo, _, expected = fragment.partition("=")
    if algo == "sha256" and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{name}: sha256 mismatch")
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)


def _regress_dir() -> Path:
    ver = _version()
    root = CACHE / f"pglast-{ver}"
    target = root / REGRESS_DIR
    if target.is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"pglast-{ver}.tar.gz"
    if not sdist.exists():
        # PyPI is reachable wherever `make install` works; a skip here would count a
        # check that never ran as passed.
        try:
            _download_sdist(ver, sdist)
        except (OSError, ValueError) as e:
            pytest.fail(f"cannot download the pglast {ver} sdist: {e}")
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if f"/{REGRESS_DIR}/" in m.name and m.isfile()]
        if not members:
            pytest.fail(f"pglast {ver} sdist ships no {REGRESS_DIR}; update REGRESS_DIR")
        tf.extractall(CACHE, members=members, filter="data")
    return target


def _statements(path: Path) -> list[str]:
    """Split a regression script into statements, dropping psql meta-commands."""
    text = path.read_text(encoding="utf-8", errors="replace")
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("\\"))
    try:
        return list(parser.split(text, with_parser=False))
    except Exception:
        return [text]  # the scanner gave up: classify the whole file as one string


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    files = sorted(_regress_dir().glob("*.sql"))
    if not files:
        pytest.fail("no regression SQL found in the pglast sdist")
    return [(f.name, s) for f in files for s in _statements(f)]


def test_regression_corpus_never_crashes_and_always_categorizes(
    corpus: list[tuple[str, str]],
) -> None:
    clear_cache()
    started = time.perf_counter()
    empty: list[str] = []
    internal: list[str] = []
    unknown_statements: Counter[str] = Counter()
    for name, sql in corpus:
        c = classify(sql)  # must not raise
        if not c.statements or any(not s.categories for s in c.statements):
            empty.append(f"{name}: {sql[:120]}")
        for r in c.reasons:
            if r.code == "internal-error":
                internal.append(f"{name}: {r.message}: {sql[:120]}")
            elif r.code == "unknown-statement":
                unknown_statements[r.message] += 1
    elapsed = time.perf_counter() - started
    clear_cache()
    assert len(corpus) > 10_000, f"suspiciously small corpus: {len(corpus)} statements"
    assert not empty, f"{len(empty)} statements without categories, e.g. {empty[:5]}"
    assert not internal, f"{len(internal)} internal errors, e.g. {internal[:5]}"
    # Every statement type PostgreSQL's own tests use has an explicit rule.
    assert not unknown_statements, f"unhandled statement types: {unknown_statements}"
    assert elapsed < 60, f"corpus took {elapsed:.1f}s"


def test_pglast_version_has_regression_sql() -> None:
    """Document what was found (shows up with -rA)."""
    assert pglast.__name__ == "pglast"
    assert _regress_dir().is_dir()


def _vary(sql: str, found: list[tuple[int, int, str]], rnd: random.Random) -> str:
    """``sql`` with every literal the mask found replaced by another of its kind."""
    out: list[str] = []
    pos = 0
    for start, end, kind in found:
        out.append(sql[pos:start])
        if kind == "S":
            body = "".join(
                rnd.choice(["a", "''", " ", "--", "/*", "*/", "\n", '"', "\\"])
                for _ in range(rnd.randint(0, 6))
            )
            out.append(f"'{body}'")
        elif kind in "NM":
            out.append(("-" if kind == "M" else "") + str(rnd.randint(0, 999_999_999)))
        else:
            out.append(
                ("-" if kind == "G" else "") + f"{rnd.randint(0, 99_999)}.{rnd.randint(0, 9)}"
            )
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def test_verified_literal_masks_agree_with_normalize_across_the_corpus(
    corpus: list[tuple[str, str]],
) -> None:
    """The classifier trusts a masked key once its rendering matched ``normalize``;
    then every other statement with that key must normalize the same. Checked on
    PostgreSQL's own SQL with each literal replaced by hostile values of its kind."""
    rnd = random.Random(20261122)
    checked = 0
    wrong: list[str] = []
    for _, sql in corpus:
        found = spans(sql)
        if not found:
            continue
        try:
            normalized = parser.normalize(sql)
        except parser.ParseError:
            continue
        if render(sql) != normalized:
            continue  # the classifier never trusts this key
        for _ in range(2):
            other = _vary(sql, found, rnd)
            if mask(other) != mask(sql):
                wrong.append(f"mask differs: {other[:120]!r}")
                continue
            checked += 1
            if parser.normalize(other) != normalized:
                wrong.append(f"{sql[:120]!r} vs {other[:120]!r}")
    assert checked > 20_000, checked
    assert not wrong, wrong[:5]
