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

Effects = tuple[tuple[Category, str, str], ...]
_ctl: Effects = ((CONTROL, "session", "session control"),)
_ddl: Effects = ((DDL, "ddl", "changes the schema"),)
_ddl_drop: Effects = (*_ddl, (DESTRUCTIVE, "drop", "removes objects"))
_ext: Effects = ((ADMIN, "extension", "installs or changes extensions (server code)"), *_ddl)
_fdw: Effects = (
    (EXPORT, "foreign-data", "foreign servers and user mappings reach other servers"),
    *_ddl,
)
_repl: Effects = (
    (ADMIN, "replication-object", "publications/subscriptions replicate data"),
    (EXPORT, "replication-object", "publications/subscriptions move data to other servers"),
    *_ddl,
)

FIXED_EFFECTS: dict[str, Effects] = {
    "VariableShowStmt": ((CONTROL, "show", "SHOW reads a setting"),),
    "ListenStmt": ((CONTROL, "listen", "LISTEN"),),
    "UnlistenStmt": ((CONTROL, "listen", "UNLISTEN"),),
    "ClosePortalStmt": _ctl,
    "ConstraintsSetStmt": _ctl,
    "LockStmt": ((WRITE, "lock", "LOCK TABLE takes table locks"),),
    "RefreshMatViewStmt": ((WRITE, "refresh", "refreshes a materialized view"),),
    "CheckPointStmt": ((ADMIN, "checkpoint", "CHECKPOINT forces a server checkpoint"),),
    "LoadStmt": ((ADMIN, "load", "LOAD loads a shared library into the server"),),
    "ClusterStmt": ((ADMIN, "cluster", "CLUSTER rewrites tables under exclusive lock"),),
    "ReindexStmt": ((ADMIN, "reindex", "REINDEX rebuilds indexes under lock"),),
    "CreateExtensionStmt": _ext,
    "AlterExtensionStmt": _ext,
    "AlterExtensionContentsStmt": _ext,
    "CreateEventTrigStmt": ((ADMIN, "event-trigger", "event triggers run on every DDL"), *_ddl),
    "AlterEventTrigStmt": ((ADMIN, "event-trigger", "event triggers run on every DDL"), *_ddl),
    "CreatePLangStmt": ((ADMIN, "language", "installs a procedural language"), *_ddl),
    "CreateTransformStmt": ((ADMIN, "transform", "creates a transform"), *_ddl),
    "CreateAmStmt": ((ADMIN, "access-method", "creates an access method"), *_ddl),
    "CreateTableSpaceStmt": ((ADMIN, "tablespace", "tablespaces are server directories"), *_ddl),
    "DropTableSpaceStmt": ((ADMIN, "tablespace", "drops a tablespace"), *_ddl_drop),
    "AlterTableSpaceOptionsStmt": ((ADMIN, "tablespace", "alters a tablespace"), *_ddl),
    "AlterTableMoveAllStmt": ((ADMIN, "tablespace", "moves relations between tablespaces"), *_ddl),
    "CreatePublicationStmt": _repl,
    "AlterPublicationStmt": _repl,
    "CreateSubscriptionStmt": _repl,
    "AlterSubscriptionStmt": _repl,
    "DropSubscriptionStmt": (*_repl, (DESTRUCTIVE, "drop", "removes objects")),
    "CreateFdwStmt": _fdw,
    "AlterFdwStmt": _fdw,
    "CreateForeignServerStmt": _fdw,
    "AlterForeignServerStmt": _fdw,
    "CreateUserMappingStmt": _fdw,
    "AlterUserMappingStmt": _fdw,
    "DropUserMappingStmt": (*_fdw, (DESTRUCTIVE, "drop", "removes objects")),
    "ImportForeignSchemaStmt": _fdw,
    "CreateForeignTableStmt": _fdw,
    "GrantStmt": ((PRIVILEGE, "grant", "GRANT/REVOKE changes privileges"),),
    "GrantRoleStmt": ((PRIVILEGE, "grant-role", "grants or revokes role membership"),),
    "AlterDefaultPrivilegesStmt": (
        (PRIVILEGE, "default-privileges", "changes default privileges"),
    ),
    "CreateRoleStmt": ((PRIVILEGE, "create-role", "creates a role"),),
    "AlterRoleStmt": ((PRIVILEGE, "alter-role", "alters a role"),),
    "DropRoleStmt": (
        (PRIVILEGE, "drop-role", "drops a role"),
        (DESTRUCTIVE, "drop", "removes roles"),
    ),
    "ReassignOwnedStmt": ((PRIVILEGE, "reassign-owned", "reassigns ownership"),),
    "DropOwnedStmt": (
        (PRIVILEGE, "drop-owned", "drops a role's objects and privileges"),
        (DESTRUCTIVE, "drop", "removes objects"),
    ),
    "AlterOwnerStmt": ((PRIVILEGE, "owner-to", "ALTER ... OWNER TO changes ownership"),),
    "CreatePolicyStmt": ((PRIVILEGE, "policy", "row-level security policy"), *_ddl),
    "AlterPolicyStmt": ((PRIVILEGE, "policy", "row-level security policy"), *_ddl),
    "SecLabelStmt": ((PRIVILEGE, "security-label", "security label"),),
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
