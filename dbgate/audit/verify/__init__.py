"""``dbgate audit verify``: recompute every chain and name the first bad record.

What it catches, for a superuser or the tables' owner (the role in ``state.dsn``)
who disabled the triggers and changed rows:

* **edited** — a record whose content no longer matches its hash, or (when the
  hash was recomputed too) whose successor no longer links to it;
* **deleted** — a gap in a chain's ``seq``, a chain whose first records are gone
  without an archive anchor, a writer registered in ``audit_writers`` whose records
  are all gone, an archive anchor no archive can have written (its month not over,
  still live, ended before the chain's writer started or after the chain's next
  record; with ``--heads``, before an anchored head was logged), and — with
  ``--heads`` — records deleted from the end of a chain after its head was logged;
* **inserted** — a second record with the same ``seq``, a record that does not link
  to its predecessor, a record after the chain's ``chain_end``, a chain no writer
  registered, or a record without a chain or ``seq``;
* **reordered** — a record whose content carries a different ``seq`` than the one it
  is stored at (tried up to three positions away, to say what happened).

Rows are read in ``(chain, seq)`` order from the same views reviewers read. The
canonical form of each row is built by PostgreSQL (see
:func:`dbgate.audit.canonical.canonical_sql`); the hashes are computed here. A file
written by ``audit export`` is verified the same way from its own content.

What no hash chain can show alone: a suffix of a chain deleted, or a whole chain
and its registration deleted, or a superuser who recomputed every hash after an
edit. Anchoring the chain heads outside the database (the operator log, the head
file) and passing them with ``--heads`` closes that.
"""

from dbgate.audit.verify.chains import Finding, Report, Verifier, print_report
from dbgate.audit.verify.database import AuditVerifyError, verify_database, verify_query
from dbgate.audit.verify.files import read_heads, verify_file

__all__ = [
    "AuditVerifyError",
    "Finding",
    "Report",
    "Verifier",
    "print_report",
    "read_heads",
    "verify_database",
    "verify_file",
    "verify_query",
]
