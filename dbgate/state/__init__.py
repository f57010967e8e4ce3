"""dbgate's own state database: approvals, audit, budgets — shared by every replica.

One PostgreSQL database (``state.dsn`` in the config) holds everything replicas must
agree on. Its schema ``dbgate`` is created and upgraded by dbgate itself with
versioned migrations (:mod:`dbgate.state.migrate`); rooms that keep state there
(``approvals``, ``audit``) add numbered SQL files to ``dbgate/state/migrations``.
"""

from dbgate.state.migrate import MigrationError, apply_migrations, pending_migrations

__all__ = ["MigrationError", "apply_migrations", "pending_migrations"]
