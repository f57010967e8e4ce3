"""PII tokenization of everything an agent receives (docs/pii.md).

Front door: :mod:`dbgate.pii.room` (``PiiRoom`` per process, ``PiiSession`` per
connection, ``StatementPlan`` per statement). The rest, one job per module:
``catalog``/``catalog_load`` (which columns), ``schema`` (the upstream snapshot),
``coverage`` (the catalog applied to it), ``lineage``/``lin`` (which outputs carry
PII), ``tokens``/``keys`` (tokens and their keys), ``issued``/``_issued.c`` (the
hashed tokens issued, to resolve them), ``pseudonyms`` (type-preserving
replacements), ``rows``/``_rows.c`` (DataRow rewriting; ``_blake2b.c`` its hashing),
``copyout`` (COPY),
``filters`` (errors, notices, notifications), ``detectors`` (content backstop),
``tokens_in`` (tokens sent back), ``commands`` (CLI). Nothing here imports
``dbgate.proxy``.
"""
