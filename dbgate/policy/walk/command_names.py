"""The SQL command a parse node stands for: what rules' ``statements`` key matches.

Most node names spell their command (``VacuumStmt`` -> ``VACUUM``); the table below
covers the ones that do not, and :func:`command_name` the few whose command depends
on a field (``BEGIN`` vs ``COMMIT``, ``GRANT`` vs ``REVOKE``).
"""

from __future__ import annotations

import re
from typing import Any

#: SQL command names for parse nodes whose name does not spell the command.
COMMANDS = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
    "ExplainStmt": "EXPLAIN",
    "VariableShowStmt": "SHOW",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "ClosePortalStmt": "CLOSE",
    "TruncateStmt": "TRUNCATE",
    "DropStmt": "DROP",
    "CreateStmt": "CREATE TABLE",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE",
    "AlterRoleSetStmt": "ALTER ROLE",
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "AlterFunctionStmt": "ALTER FUNCTION",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "CreateForeignServerStmt": "CREATE SERVER",
    "AlterForeignServerStmt": "ALTER SERVER",
    "DefineStmt": "CREATE",
    "CheckPointStmt": "CHECKPOINT",
    "LockStmt": "LOCK",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "NotifyStmt": "NOTIFY",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "DiscardStmt": "DISCARD",
    "LoadStmt": "LOAD",
    "ReindexStmt": "REINDEX",
    "ClusterStmt": "CLUSTER",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "RenameStmt": "ALTER",
    "AlterOwnerStmt": "ALTER",
    "AlterObjectSchemaStmt": "ALTER",
    "AlterTableStmt": "ALTER TABLE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
}

_TRANSACTION_COMMANDS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_CAMEL = re.compile(r"(?<!^)(?=[A-Z][a-z])")


def command_name(k: str, body: dict[str, Any]) -> str:
    """The SQL command a parse node stands for (what rules' ``statements`` match)."""
    if k == "TransactionStmt":
        return _TRANSACTION_COMMANDS.get(body.get("kind", ""), "TRANSACTION")
    if k == "VariableSetStmt":
        return "RESET" if body.get("kind", "").startswith("VAR_RESET") else "SET"
    if k == "VacuumStmt":
        return "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
    if k == "FetchStmt":
        return "MOVE" if body.get("ismove") else "FETCH"
    if k in ("GrantStmt", "GrantRoleStmt"):
        return "GRANT" if body.get("is_grant") else "REVOKE"
    if k == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_MATVIEW":
        return "CREATE MATERIALIZED VIEW"
    if k == "SelectStmt" and "intoClause" in body:
        return "SELECT INTO"
    name = COMMANDS.get(k)
    if name is not None:
        return name
    return _CAMEL.sub(" ", k.removesuffix("Stmt")).upper()
