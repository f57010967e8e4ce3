"""Statements whose categories do not depend on their arguments.

``GRANT`` is ``privilege`` whatever it grants, ``CREATE INDEX`` is ``ddl`` whatever it
indexes. Each entry lists (category, reason code, reason message). The expressions
such statements contain (defaults, view queries) are still walked, by
:func:`dbgate.policy.walk.statements.definition`, for dangerous function calls.
"""

from __future__ import annotations

from dbgate.policy.model import (
    ADMIN,
    CONTROL,
    DDL,
    DESTRUCTIVE,
    EXPORT,
    PRIVILEGE,
    WRITE,
    Category,
)

#: (category, reason code, reason message); ``{command}`` in a message stands for the
#: statement's SQL command (``CREATE INDEX``, ``ALTER DOMAIN`` ...).
Effects = tuple[tuple[Category, str, str], ...]
_ddl: Effects = ((DDL, "ddl", "changes the schema ({command})"),)
_ddl_drop: Effects = (
    *_ddl,
    (DESTRUCTIVE, "drop", "removes objects and what they hold ({command})"),
)
_ext: Effects = (
    (ADMIN, "extension", "installs or changes an extension, code that runs in the server"),
    *_ddl,
)
_fdw: Effects = (
    (EXPORT, "foreign-data", "sets up access to another server, through which data can leave"),
    *_ddl,
)
_repl: Effects = (
    (ADMIN, "replication-object", "sets up logical replication ({command})"),
    (EXPORT, "replication-object", "replicates table data to another server ({command})"),
    *_ddl,
)
_event_trigger: Effects = (
    (ADMIN, "event-trigger", "creates or changes an event trigger, which runs on every DDL"),
    *_ddl,
)
_tablespace = "changes a tablespace, a directory on the database server ({command})"
_policy: Effects = (
    (PRIVILEGE, "policy", "changes a row-level security policy, which decides who sees which rows"),
    *_ddl,
)

FIXED_EFFECTS: dict[str, Effects] = {
    "VariableShowStmt": ((CONTROL, "show", "shows a setting (SHOW)"),),
    "ListenStmt": ((CONTROL, "listen", "listens for notifications (LISTEN)"),),
    "UnlistenStmt": ((CONTROL, "listen", "stops listening for notifications (UNLISTEN)"),),
    "ClosePortalStmt": ((CONTROL, "session", "closes a cursor (CLOSE)"),),
    "ConstraintsSetStmt": (
        (CONTROL, "session", "sets when constraints are checked (SET CONSTRAINTS)"),
    ),
    "RefreshMatViewStmt": (
        (WRITE, "refresh", "recomputes a materialized view (REFRESH MATERIALIZED VIEW)"),
    ),
    "CheckPointStmt": ((ADMIN, "checkpoint", "forces a server checkpoint (CHECKPOINT)"),),
    "LoadStmt": ((ADMIN, "load", "loads a shared library into the server (LOAD)"),),
    "ClusterStmt": (
        (ADMIN, "cluster", "rewrites tables under an exclusive lock (CLUSTER), blocking others"),
    ),
    "ReindexStmt": (
        (ADMIN, "reindex", "rebuilds indexes under a lock (REINDEX), blocking others"),
    ),
    "CreateExtensionStmt": _ext,
    "AlterExtensionStmt": _ext,
    "AlterExtensionContentsStmt": _ext,
    "CreateEventTrigStmt": _event_trigger,
    "AlterEventTrigStmt": _event_trigger,
    "CreatePLangStmt": (
        (ADMIN, "language", "installs a procedural language, code that runs in the server"),
        *_ddl,
    ),
    "CreateTransformStmt": (
        (ADMIN, "transform", "creates a transform between a type and a procedural language"),
        *_ddl,
    ),
    "CreateAmStmt": (
        (ADMIN, "access-method", "creates an access method, served by code in the server"),
        *_ddl,
    ),
    "CreateTableSpaceStmt": ((ADMIN, "tablespace", _tablespace), *_ddl),
    "DropTableSpaceStmt": ((ADMIN, "tablespace", _tablespace), *_ddl_drop),
    "AlterTableSpaceOptionsStmt": ((ADMIN, "tablespace", _tablespace), *_ddl),
    "AlterTableMoveAllStmt": (
        (ADMIN, "tablespace", "moves every relation of a tablespace to another one"),
        *_ddl,
    ),
    "CreatePublicationStmt": _repl,
    "AlterPublicationStmt": _repl,
    "CreateSubscriptionStmt": _repl,
    "AlterSubscriptionStmt": _repl,
    "DropSubscriptionStmt": (*_repl, (DESTRUCTIVE, "drop", "drops a subscription")),
    "CreateFdwStmt": _fdw,
    "AlterFdwStmt": _fdw,
    "CreateForeignServerStmt": _fdw,
    "AlterForeignServerStmt": _fdw,
    "CreateUserMappingStmt": _fdw,
    "AlterUserMappingStmt": _fdw,
    "DropUserMappingStmt": (*_fdw, (DESTRUCTIVE, "drop", "drops a user mapping")),
    "ImportForeignSchemaStmt": _fdw,
    "CreateForeignTableStmt": _fdw,
    "GrantStmt": ((PRIVILEGE, "grant", "changes privileges on objects ({command})"),),
    "GrantRoleStmt": ((PRIVILEGE, "grant-role", "changes role membership ({command})"),),
    "AlterDefaultPrivilegesStmt": (
        (PRIVILEGE, "default-privileges", "changes the privileges future objects get"),
    ),
    "CreateRoleStmt": ((PRIVILEGE, "create-role", "creates a role"),),
    "AlterRoleStmt": ((PRIVILEGE, "alter-role", "changes a role's attributes or password"),),
    "DropRoleStmt": (
        (PRIVILEGE, "drop-role", "drops a role"),
        (DESTRUCTIVE, "drop", "drops a role"),
    ),
    "ReassignOwnedStmt": (
        (PRIVILEGE, "reassign-owned", "gives every object of a role to another role"),
    ),
    "DropOwnedStmt": (
        (PRIVILEGE, "drop-owned", "revokes a role's privileges and drops its objects"),
        (DESTRUCTIVE, "drop", "drops every object a role owns (DROP OWNED)"),
    ),
    "AlterOwnerStmt": ((PRIVILEGE, "owner-to", "gives an object to another owner (OWNER TO)"),),
    "CreatePolicyStmt": _policy,
    "AlterPolicyStmt": _policy,
    "SecLabelStmt": ((PRIVILEGE, "security-label", "sets a security label on an object"),),
    "CreatedbStmt": _ddl,
    "AlterDatabaseStmt": _ddl,
    "AlterDatabaseRefreshCollStmt": _ddl,
    "DropdbStmt": _ddl_drop,
    "IndexStmt": _ddl,
    "CreateSeqStmt": _ddl,
    "AlterSeqStmt": _ddl,
    "ViewStmt": _ddl,
    "CreateTrigStmt": _ddl,
    "RuleStmt": _ddl,
    "CreateDomainStmt": _ddl,
    "AlterDomainStmt": _ddl,
    "CreateEnumStmt": _ddl,
    "AlterEnumStmt": _ddl,
    "CompositeTypeStmt": _ddl,
    "CreateRangeStmt": _ddl,
    "DefineStmt": _ddl,
    "CreateCastStmt": _ddl,
    "CreateOpClassStmt": _ddl,
    "CreateOpFamilyStmt": _ddl,
    "AlterOpFamilyStmt": _ddl,
    "CreateConversionStmt": _ddl,
    "CreateStatsStmt": _ddl,
    "AlterStatsStmt": _ddl,
    "CommentStmt": _ddl,
    "AlterObjectSchemaStmt": _ddl,
    "AlterObjectDependsStmt": _ddl,
    "AlterOperatorStmt": _ddl,
    "AlterTypeStmt": _ddl,
    "AlterCollationStmt": _ddl,
    "AlterTSConfigurationStmt": _ddl,
    "AlterTSDictionaryStmt": _ddl,
}
