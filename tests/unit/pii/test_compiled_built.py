"""The compiled PII row loop is built by ``make install`` (setup.py).

Its tests elsewhere (test_rewriters.py, test_issued.py) skip where no compiler was
available, as the module is optional; here, where it is built, that skip must never
hide it: without it tokenization silently runs at the Python reference's speed."""

from __future__ import annotations

import importlib


def test_the_compiled_row_loop_and_token_store_are_built() -> None:
    rows = importlib.import_module("dbgate.pii._rows")
    assert callable(rows.rewrite_rows) and callable(rows.use_simd)
    from dbgate.pii.issued import IssuedTokens, PyIssuedTokens

    assert IssuedTokens is not PyIssuedTokens  # the compiled store, not the fallback
