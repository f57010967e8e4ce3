"""Expressions: the generic descent, and a handler for each node kind that needs one.

A value's lineage is the union of what flows into it (any node kind without a handler
is walked that way: fail closed), except where a handler knows better: ``count(*)``
carries no value (``count(x)`` counts a choice), a user function or a data reader is unknown, a column reference
resolves through the scope, a token literal or a bind parameter notes where it sits.

:meth:`Expressions.expr` and :meth:`Expressions.generic` are the hottest functions of a
cold plan: one lookup per node in ``_EXPR``, a plain dict of functions built once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage.builtin_names import (
    BUILTIN_SET_RETURNING,
    DATA_READERS,
    EXTENSION_SQL_RUNNERS,
    EXTENSION_STATE_WRITERS,
    HYPOTHETICAL_SET_AGGREGATES,
    PRNG_DRAWS,
    SIDE_EFFECTS,
    STATE_WRITERS,
    VALUE_FREE_FUNCTIONS,
    WORK_COUNTER_PREFIX,
)
from dbgate.pii.lineage.context import FILTER, NOT_A_CONTAINER, Ctx, refused
from dbgate.pii.lineage.nodes import (
    ROUNDING,
    STATISTICS,
    Node,
    casts_to_cut,
    listed,
    lossless_cast,
    strs,
)
from dbgate.pii.lineage.results import TokenSite
from dbgate.pii.lineage.scope import Item, Scope
from dbgate.pii.lineage.state import WalkState
from dbgate.pii.tokens import TOKEN_RE, in_container_syntax
from dbgate.policy.catalog_builtin import AGGREGATES, VOLATILE


class Expressions(WalkState):
    """Values, and where the tokens and parameters inside them sit."""

    def expr(self, node: Any, scope: Scope, ctx: Ctx) -> Lin:
        # the hottest function of a cold plan: one dict lookup per node where it can
        if isinstance(node, dict):
            if len(node) == 1:
                ((kind, body),) = node.items()
                handler = _EXPR.get(kind)
                if handler is not None:
                    return handler(self, body, scope, ctx)
                if kind[:1].isupper():
                    return self.generic(body, scope, ctx)
            return self.generic(node, scope, ctx)
        if isinstance(node, list):
            out = CLEAN
            for n in node:
                out = out | self.expr(n, scope, ctx)
            return out
        return CLEAN

    def generic(self, body: Any, scope: Scope, ctx: Ctx) -> Lin:
        """Any node without a handler: the union of everything inside (fail closed)."""
        out = CLEAN
        if isinstance(body, dict):
            expr = self.expr
            for key, value in body.items():
                if isinstance(value, (dict, list)) and key not in _NOT_VALUES:
                    out = out | expr(value, scope, ctx)
        elif isinstance(body, list):
            for value in body:
                out = out | self.expr(value, scope, ctx)
        return out

    def walk_side(self, node: Any, why: str) -> None:
        """Walk a part whose values may be stored or echoed: tokens there are refused.

        Token sites matter here, and what the part reads that the walk cannot follow
        (``COPY t FROM STDIN WHERE current_setting(pg_stat_get_backend_activity(n))
        IS NULL`` runs its WHERE and fails naming another session's query text, with
        the values of the tokens that session sent: its errors must be withheld);
        names that do not resolve without their scope are not reported as unknown.
        """
        if node is not None:
            reasons = len(self.r.unknown_reasons)
            first = len(self.r.token_sites)
            self.expr(node, Scope(None), refused(why))
            self.r.unknown_reasons[reasons:] = [
                r for r in self.r.unknown_reasons[reasons:] if r.endswith(_READS_UNFOLLOWED)
            ]
            # a sub-select in the part walks its own comparisons, where a token stands
            # for its value: ``EXPLAIN SELECT … WHERE id IN (SELECT id FROM customers
            # WHERE email = 'tok_…')`` printed the resolved value in its plan, and a
            # policy's or a SQL function's stored text kept it. Refused, all of them.
            sites = self.r.token_sites
            sites[first:] = [
                s if not s.allowed else TokenSite(s.location, False, why, s.text)
                for s in sites[first:]
            ]

    def e_ColumnDef(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        """A column's definition: its name and type hold no values, but its ``CHECK``
        and ``DEFAULT`` run on every row written to it. ``email text CHECK
        (pg_try_advisory_xact_lock(ascii(email), …) IS NOT NULL)`` kept the e-mail of
        every later INSERT where ``pg_locks`` showed it, as the table's own CHECK
        beside the columns would (and is held for)."""
        return self.expr([body.get("raw_default"), body.get("constraints")], scope, ctx)

    def e_ColumnRef(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        fields = body["fields"]
        names = strs(fields)
        if "A_Star" in fields[-1]:
            found = self.lookup(names[:-1], scope) if len(names) > 1 else None
            if found is None:
                if len(names) == 1:
                    out = CLEAN
                    for it in scope.stars:
                        out = out | self.met(scope, it, it.whole())
                    return out
                return self.unknown(
                    f"{'.'.join(names)} of an unknown relation", computed=not self.unscoped_names
                )
            return self.met(found[1], found[0], found[0].whole())
        return self.resolve(names, scope)

    def resolve(self, names: list[str], scope: Scope) -> Lin:
        if len(names) == 1:
            name = names[0]
            s: Scope | None = scope
            while s is not None:
                found: Lin | None = None
                for item in s.items:
                    lin = item.get(name)
                    if lin is not None:
                        found = lin if found is None else found | lin
                        self.met(s, item, lin, name)
                if found is not None:
                    return found
                for item in reversed(s.items):
                    if item.alias == name:
                        # a whole-row reference: t, row_to_json(t)
                        return self.met(s, item, item.whole())
                s = s.parent
            if name in SYSTEM_COLUMNS:
                for s, item in _tables_out(scope):
                    self.met(s, item, CLEAN, name)
                    return CLEAN
            return self.unknown(f"column {name!r} could not be resolved", computed=False)
        hit = self.lookup(names[:-1], scope)
        if hit is not None:
            item, level = hit
            lin = item.get(names[-1])
            if lin is not None:
                return self.met(level, item, lin, names[-1])
            if item.table and names[-1] in SYSTEM_COLUMNS:
                # ``o.ctid``: where the row is stored, which differs per row
                return self.met(level, item, CLEAN, names[-1])
            return self.unknown(f"column {'.'.join(names)} does not exist in dbgate's snapshot")
        # t.c where t is a column of a composite type: the whole of that column
        base = self.resolve(names[:1], scope) if len(names) == 2 else UNKNOWN_LIN
        if base is UNKNOWN_LIN:
            return self.unknown(
                f"column {'.'.join(names)} could not be resolved",
                computed=not self.unscoped_names,
            )
        return base

    def e_A_Const(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        sval = body.get("sval")
        if sval is None:
            return CLEAN
        text = sval.get("sval", "")
        if "tok_" not in text:
            return CLEAN
        entities = frozenset(m.group(1) for m in TOKEN_RE.finditer(text))
        if not entities:
            return CLEAN
        why = ctx.token_refusal()
        if why is None and not ctx.container and in_container_syntax(text):
            why = NOT_A_CONTAINER
        self.r.token_sites.append(
            TokenSite(body.get("location", -1), why is None, why or "", text, ctx.stores)
        )
        lin = Lin(entities, token=True)
        self.saw(lin)
        return lin

    def e_ParamRef(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        n = body.get("number", 0)
        why = ctx.token_refusal()
        if why is not None:
            self.r.param_sites[n] = why
        else:
            self.r.param_sites.setdefault(n, "")
            if ctx.stores:
                self.r.param_stores.add(n)
            if not ctx.container:
                self.r.param_loose.add(n)
        lin = Lin(params=frozenset((n,)))
        self.saw(lin)
        return lin

    def e_A_Expr(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        """An operator: its operands' union. A bare value (a literal or a parameter,
        cast, listed or in an array) compared with PII may be a token to resolve;
        one an operator computes on may not (:mod:`~dbgate.pii.lineage.context`)."""
        left, right = body.get("lexpr"), body.get("rexpr")
        coded = self.snap.coded_operators
        if coded and (op := strs(body.get("name"))) and op[-1] in coded:
            # an operator the database defines over code that may read tables (``1 +
            # 'x'::text`` calling a SQL function that returns an e-mail): as a user
            # function given its operands
            met = len(self.refs) if self.refs is not None else 0
            lin = self.expr([left, right], scope, refused(f"an operand of the operator {op[-1]}"))
            self.met_opaque(scope, met)
            return lin | self.unknown(f"the operator {op[-1]} may be the database's own code")
        if _compares(body):
            # ``@>`` and ``<@`` compare whole values only inside arrays and JSON
            # (``tags @> ARRAY['tok_…']``): of a range, a multirange, a cube, an ltree or
            # an hstore they ask whether the value lies within bounds the other operand
            # chose — ``numrange(0 * length(card_number), 5e15) @> 'tok_…'::numeric``
            # halved the card number's interval per statement
            contains = strs(body.get("name") or [])[-1] in ("@>", "<@")
            # under ANY the array's elements are the operands, each a scalar:
            # ``numrange(0 * length(card_number), hi) @> ANY (ARRAY['tok_…'::numeric])``
            # is the bounds question again
            each = body.get("kind") == "AEXPR_OP_ANY"
            for bare, side in ((right, left), (left, right)):
                if not _bare_value(bare) or _bare_value(side):
                    continue
                other = self.expr(side, scope, ctx)
                as_is = _is_pii(other) and self.keeps_whole(side, scope)
                if contains and (each or not _container(bare)):
                    as_is = False
                container = (each and bare is right) or self.reads_container(side, scope)
                value_ctx = ctx.comparing(container) if as_is else ctx
                first = len(self.r.token_sites)
                value = self.expr(bare, scope, value_ctx)
                if contains and as_is:
                    self.r.param_contained |= value.params
                    if not container:
                        # a JSON object too: against a range of the database's own over
                        # text the whole literal is one element, compared with bounds
                        sites = self.r.token_sites
                        sites[first:] = [
                            s
                            if not s.allowed
                            else TokenSite(s.location, False, NOT_A_CONTAINER, s.text, s.stores)
                            for s in sites[first:]
                        ]
                return other | value if bare is right else value | other
        return self.expr(left, scope, ctx) | self.expr(right, scope, ctx)

    def keeps_whole(self, side: Node, scope: Scope) -> bool:
        """Whether a literal compared with ``side`` is read whole: ``side`` casts to no
        type that keeps part of a text, nor does the text anywhere (``cuts_anywhere``),
        and it is not of a float type (``ROUNDING``: a built-in returning one in it, or,
        unless it is a stored table's column, anywhere in the text) — a token's value
        read as a float keeps about 15 digits, and a near-miss guess matches."""
        if casts_to_cut(side) or self.cuts_anywhere() or casts_to_cut(side, ROUNDING):
            return False
        return self.stored_column(side, scope) or not self.rounds_anywhere()

    def stored_column(self, side: Node, scope: Scope, relation: bool = False) -> bool:
        """Whether ``side`` is a column of one stored table (its type is the table's,
        whatever the rest of the text computes); ``relation``: of a relation the
        snapshot knows, a view or a name several schemas hold too — the catalog's, not
        a value the text computes (``Expressions.packs``)."""
        ref = side.get("ColumnRef") if isinstance(side, dict) else None
        if ref is None:
            return False
        names = strs(ref.get("fields") or [])
        if not names or len(names) != len(ref.get("fields") or []):
            return False  # a star
        if len(names) > 1:
            found = self.lookup(names[:-1], scope)
            return found is not None and _stored(found[0], relation) and names[-1] in found[0].names
        s: Scope | None = scope
        while s is not None:
            items = [item for item in s.items if item.get(names[0]) is not None]
            if items:
                return all(_stored(item, relation) and names[0] in item.names for item in items)
            s = s.parent
        return False

    def e_NullTest(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        """``x IS [NOT] NULL``: what ``x`` carries — but of a table's column as it is,
        nothing: its NULL reaches the agent as NULL (``SELECT phone``), so ``phone IS
        NULL AS no_phone`` and ``sum(CASE WHEN phone IS NULL THEN 1 ELSE 0 END)`` say no
        more than ``count(*) - count(phone)``. The column is still met, for the
        predicates around it."""
        arg = body.get("arg")
        lin = self.expr(arg, scope, ctx)
        if lin.pii and not (lin.unknown or lin.params) and self.stored_column(arg, scope):
            return CLEAN
        return lin

    def e_TypeCast(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        coded = self.snap.coded_casts
        target = strs((body.get("typeName") or {}).get("names"))
        if coded and target and target[-1] in coded:
            # a cast the database defines over code that may read tables (``1::wrap``
            # calling a SQL function that returns an e-mail): as a call of it
            met = len(self.refs) if self.refs is not None else 0
            lin = self.expr(body.get("arg"), scope, refused(f"a value cast to {target[-1]}"))
            self.met_opaque(scope, met)
            return lin | self.unknown(f"a cast to {target[-1]} may be the database's own code")
        return self.expr(body.get("arg"), scope, ctx.read_as(_container_type(body)))

    def e_A_ArrayExpr(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        """``ARRAY[…]``: each element is a scalar of the element type."""
        return self.expr(body.get("elements"), scope, ctx.read_as(False))

    def reads_container(self, side: Node, scope: Scope) -> bool:
        """Whether ``side`` is visibly an array or a JSON value, so that a literal
        compared with it is read as one: ``ARRAY[…]``, ``ARRAY(SELECT …)``, a cast to
        an array type, json or jsonb, a built-in that returns one
        (``CONTAINER_FUNCTIONS``, ``->``, ``#>``), or a stored table's column of such a
        type (in every relation the text names that has a column of its name)."""
        if not isinstance(side, dict) or len(side) != 1:
            return False
        ((kind, body),) = side.items()
        if kind == "A_ArrayExpr":
            return True
        if kind == "TypeCast":
            return _container_type(body)
        if kind == "SubLink":
            return body.get("subLinkType") == "ARRAY_SUBLINK"
        if kind == "FuncCall":
            parts = strs(body.get("funcname"))
            name = parts[-1].lower()
            schema = parts[-2] if len(parts) > 1 else None
            return (
                name in CONTAINER_FUNCTIONS
                and schema in (None, "pg_catalog")
                and self.is_builtin(name, schema)
            )
        if kind == "A_Expr":
            op = strs(body.get("name") or [])
            return body.get("kind") == "AEXPR_OP" and op in (["->"], ["#>"])
        if kind == "ColumnRef" and self.stored_column(side, scope):
            names = strs(body.get("fields") or [])
            oids = self.column_types(names[-1])
            return bool(oids) and all(self.container_oid(oid) for oid in oids)
        return False

    def e_SubLink(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        # standing as a whole predicate, a sub-select keeps or drops the rows around it
        # (one bit per row); anywhere else its rows kept by their own PII are a value:
        # ``(SELECT count(*) FROM customers WHERE id = 42 AND ascii(email) & 4 <> 0)``
        # is a bit, and a select list holds as many as it likes in one row
        # (as a whole predicate, that is one bit of the level whose rows it keeps)
        leaf = self.leaf_sublink is body
        self.leaf_sublink = None
        test = self.expr(body.get("testexpr"), scope, ctx)
        sub = body.get("subselect")
        if sub is None:
            return test
        kind = body.get("subLinkType")
        exists = kind == "EXISTS_SUBLINK"
        out = self.query(sub, scope, FILTER if exists else ctx)
        if kind == "ARRAY_SUBLINK" and (out.ordered.pii or out.ordered.unknown):
            # the rows listed in their order, as ``array_agg`` over them:
            # ``ARRAY(SELECT id FROM customers ORDER BY email)`` is the e-mails' order
            test = test | Lin(out.ordered.entities, out.ordered.unknown)
        if leaf and out.asked is not CLEAN:
            scope.ask(out.asked, out.asked_levels)
        asked = CLEAN if leaf else out.asked
        op = strs(body.get("operName"))
        if op and op[-1] in self.snap.coded_operators:
            # ``x + ANY (SELECT ...)`` of an operator of the database's own code
            test = test | self.unknown(f"the operator {op[-1]} may be the database's own code")
        if exists:
            # whether the sub-select has rows: what chose, sized or cut them decides it
            # (``EXISTS (SELECT 1 FROM customers c, generate_series(1, ascii(c.email))
            # WHERE c.id = 42 OFFSET g - 1)`` is true for g up to the code), so the
            # answer carries that, and relates it with the outer columns met inside
            chosen = out.chosen | asked
            return test | self.from_elsewhere(Lin(chosen.entities, chosen.unknown, chosen.params))
        return test | self.from_elsewhere(out.union() | asked)

    def from_elsewhere(self, lin: Lin) -> Lin:
        """A sub-select's value: PII in it comes from its own rows, not from a row the
        predicate around it names (see ``Queries.chose``)."""
        if lin.pii or lin.unknown or lin.params:
            self.sublinks += 1
        return lin

    def e_FuncCall(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        parts = strs(body["funcname"])
        name = parts[-1].lower()
        schema = parts[-2] if len(parts) > 1 else None
        builtin = schema in (None, "pg_catalog") and self.is_builtin(name, schema)
        if builtin and name in VOLATILE:
            self.met_varying(scope)
            if name in PRNG_DRAWS:
                self.draws.append((name, scope, body.get("location", -1)))
        # WITHIN GROUP (ORDER BY x) of mode()/percentile_*(): x is the value input
        within = bool(body.get("agg_within_group")) and not (
            builtin and name in HYPOTHETICAL_SET_AGGREGATES
        )
        over = body.get("over")
        aggregate = over or (
            builtin
            and (
                name in AGGREGATES
                or body.get("agg_star")
                or body.get("agg_filter")
                or body.get("agg_distinct")
            )
        )
        # what its own argument, FILTER or keys ask keeps no row of the level
        asks = _asks(scope) if aggregate else None
        # an aggregate's FILTER chooses the rows it adds up: sum(g) FILTER (WHERE g = ...)
        filtered = self.choose(body.get("agg_filter"), scope, rows=False)
        met = len(self.refs) if self.refs is not None else -1
        lin = self._func_call(body, scope, ctx, parts, name, builtin, within)
        if asks is not None:
            _set_aside(asks)
            self.packs(body, name, scope, over, met)
        if (filtered.pii or filtered.unknown or filtered.params) and not _nulls_only(
            body.get("agg_filter"), lambda n: self.stored_column(n, scope)
        ):
            # and which rows one aggregate adds up is a value of it, as a CASE's
            # condition is (``sum(CASE WHEN ... THEN 1 END)``): over one row
            # ``count(*) FILTER (WHERE ascii(email) & 4 <> 0)`` is a bit of the e-mail,
            # and a select list holds as many as it likes, reading that one row. Not
            # whether a table's column is NULL (``FILTER (WHERE phone IS NULL)``): its
            # NULL reaches the agent as NULL, and ``count(phone)`` is a number too.
            lin = lin | Lin(filtered.entities, filtered.unknown, filtered.params)
        return lin

    def packs(self, body: Node, name: str, scope: Scope, over: Node | None, met: int) -> None:
        """Count an aggregate or window function at its level (``Scope.packs``,
        ``Scope.sorts``) when it packs rows: its value can hold more than one bounded
        number (``string_agg(id::text, ',')``, ``sum(power(2::numeric, id))``,
        ``count(*) FILTER (WHERE id = 7)``: all but ``_bounded``), or depends on the
        order of the rows it reads (``array_agg``, ``row_number() OVER ()``: all but
        ``ORDER_FREE``). Over rows kept by a question of their own PII, or in an order
        PII chose, the value carries that PII (``Scope.mark``). An aggregate whose
        arguments name only an outer level's columns is that level's, as the server
        reads it (``SELECT (SELECT string_agg(c.id::text, ',')) FROM customers c``)."""
        level = scope
        if not over and met >= 0 and self.refs is not None:
            level = _aggregate_level(self.refs[met:], scope)
        stored = self.stored_column
        if over:
            bounded = _bounded_window(body, name, over, level, lambda n: stored(n, scope, True))
            # rank() and its kind count the rows whose keys come before: peers rank
            # alike, whatever order the rows arrive in (row_number(), ntile() do not)
            sorts = name not in HYPOTHETICAL_SET_AGGREGATES or bool(body.get("args"))
        else:
            bounded = _bounded_aggregate(body, name, lambda n: stored(n, scope, True))
            sorts = name not in ORDER_FREE
        if not bounded:
            level.packs += 1
        elif not over and name == "count":
            level.counts += 1
        if sorts:
            level.sorts += 1

    def _func_call(
        self,
        body: Node,
        scope: Scope,
        ctx: Ctx,
        parts: list[str],
        name: str,
        builtin: bool,
        within: bool,
    ) -> Lin:
        # a window function's value is computed from its window's order and
        # partitions: it carries their keys' PII (``Queries.window``)
        windowed = self.window(body["over"], scope) if body.get("over") else CLEAN
        ranked = windowed
        if not within and body.get("agg_order"):
            # the order of an aggregate's input is kept in its result, which a subscript
            # cuts like a LIMIT (``(json_agg(g ORDER BY abs(g - ascii(...))))->0`` is the
            # code): each item chooses, as a query's ORDER BY does, and the value
            # carries what the items read, from any row: over a table's own rows,
            # ``(array_agg(id ORDER BY ascii(substr(email, i, 1)) & b DESC, id <>
            # 1))[1]`` is 1 exactly where customer 1's bit is 1, and a select list of a
            # few hundred spelled the e-mail in one returned row; ``string_agg(id::text,
            # ',' ORDER BY birth_date)`` lists every customer by birth date in one row
            for item in body["agg_order"]:
                ranked = ranked | self.choose(item, scope, rows=False)
        # a hypothetical-set aggregate counts the rows whose WITHIN GROUP key sorts
        # before its argument: ``rank(x) WITHIN GROUP (ORDER BY k)`` is ``1 + count(*)
        # FILTER (WHERE k < x)``, whose FILTER is a value of it (over one row,
        # ``rank(1) WITHIN GROUP (ORDER BY ascii(email) & 4)`` is a bit)
        value = self._func_value(body, scope, ctx, parts, name, builtin, within)
        if ranked.pii or ranked.unknown or ranked.params:
            return value | Lin(ranked.entities, ranked.unknown, ranked.params)
        return value

    def _func_value(
        self,
        body: Node,
        scope: Scope,
        ctx: Ctx,
        parts: list[str],
        name: str,
        builtin: bool,
        within: bool,
    ) -> Lin:
        args = body.get("args")
        if within and body.get("agg_order"):
            args = [*(args or ()), *body["agg_order"]]
        if builtin and name in SIDE_EFFECTS:
            lin = self.expr(args, scope, refused(f"an argument of {name}()"))
            if name in STATE_WRITERS:
                self.state_writes.append((name, lin, scope))
            self.r.param_writes |= lin.params
            return lin
        if not builtin:
            met = len(self.refs) if self.refs is not None else 0
            lin = self.expr(
                args, scope, refused(f"an argument of the user function {'.'.join(parts)}()")
            )
            self.r.param_writes |= lin.params
            self.met_opaque(scope, met)
            if name in EXTENSION_STATE_WRITERS:
                self.state_writes.append((name, lin, scope))
            own = self.unknown(f"{'.'.join(parts)}() is not a PostgreSQL built-in function")
            # as many rows as its arguments say, as a built-in's (``sets_rows``):
            # ``count(*)`` over ``SELECT skeys(hstore(array[substr(email, 1, 1), 'a'],
            # …))`` was 1 exactly where the e-mail began with an ``a`` — its being
            # unknown for its own sake says nothing of that, as in FROM, unless it runs
            # a query given as text (``crosstab``), whose rows it returns
            sized = lin | own if name in EXTENSION_SQL_RUNNERS else lin
            if (sized.pii or sized.unknown or sized.params) and self.may_set_rows(name):
                scope.chosen = scope.chosen | Lin(sized.entities, sized.unknown, sized.params)
            return lin | own
        if name in DATA_READERS or name.startswith(WORK_COUNTER_PREFIX):
            met = len(self.refs) if self.refs is not None else 0
            self.expr(args, scope, FILTER)
            self.met_opaque(scope, met)
            value = self.unknown(f"{name}() reads data dbgate cannot follow")
            if self.may_set_rows(name):
                # ``ts_stat('select …')`` returns as many rows as what it read says
                scope.chosen = scope.chosen | value
            return value
        if name == "count" or (name in VALUE_FREE_FUNCTIONS and not args):
            # count(x) counts the rows where x is not null, count(DISTINCT x) the values
            # of x: a choice, like FILTER (count(nullif(g <= ascii(...), false))) — and,
            # like FILTER, a value of this count when x is computed: over one row
            # ``count(nullif(ascii(email) & 4, 0))`` is a bit. A stored column's count
            # (``count(email)``, ``count(DISTINCT email)``) stays a number.
            counted = CLEAN
            for arg in args or ():
                chose = self.choose(arg, scope, rows=False)
                if not _bare_column(arg) and (chose.pii or chose.unknown or chose.params):
                    counted = counted | Lin(chose.entities, chose.unknown, chose.params)
            return counted
        met = len(self.refs) if self.refs is not None else -1
        lin = self.expr(args, scope, ctx)
        if (lin.pii or lin.unknown or lin.params) and self.sets_rows(name, args):
            # as many rows as its arguments say (SELECT generate_series(1, ascii(...))):
            # they size this level, and a count of its rows is the value (a bind
            # parameter's too: it may be a token, resolved)
            scope.chosen = scope.chosen | Lin(lin.entities, lin.unknown, lin.params)
        elif (
            not scope.multiplied
            and met >= 0
            and len(self.refs or ()) > met
            and self.sets_rows(name, args)
        ):
            # as many rows per row as a column says (``generate_series(1, 1 << id %
            # 20)``): a count of them one level up is the text's to choose
            scope.multiplied = True
        return lin

    def sets_rows(self, name: str, args: list[Node] | None) -> bool:
        """Whether the built-in ``name`` returns a set whose size its arguments decide
        (``unnest`` of arrays the text lists returns that many rows)."""
        if name == "unnest" and args and all(listed(a) for a in args):
            return False
        funcs = self.snap.functions_named(name)
        if funcs:
            return any(f.returns_set for f in funcs if f.builtin)
        return name in BUILTIN_SET_RETURNING

    def may_set_rows(self, name: str) -> bool:
        """Whether a function of the database's own (an extension's, a user's) called
        ``name`` may return a set: one of that name does, or none is known."""
        funcs = self.snap.functions_named(name)
        return not funcs or any(f.returns_set for f in funcs)

    def is_builtin(self, name: str, schema: str | None) -> bool:
        funcs = self.snap.functions_named(name)
        if not funcs:
            return self.snap.assume_builtin_functions
        if schema == "pg_catalog":
            return any(f.builtin for f in funcs)
        # an unqualified name may resolve to a user function first (search_path):
        # built-in only when every function of that name is
        return all(f.builtin for f in funcs)

    def e_GroupingFunc(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        self.expr(body.get("args"), scope, FILTER)  # a bit mask of grouping columns
        return CLEAN

    def e_A_Indirection(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        return self.expr(body.get("arg"), scope, ctx) | self.expr(
            body.get("indirection"), scope, FILTER
        )

    def e_RangeSubselect(self, body: Node, scope: Scope, ctx: Ctx) -> Lin:
        return self.query(body["subquery"], scope, ctx).union()


#: The reasons :meth:`Expressions.e_FuncCall` gives for a call that reads data of its
#: own (a data reader, a user function): kept by ``walk_side``.
_READS_UNFOLLOWED = ("reads data dbgate cannot follow", "is not a PostgreSQL built-in function")


def _leaf(self: Expressions, body: Any, scope: Scope, ctx: Ctx) -> Lin:
    return CLEAN


#: Keys of a node that hold no values (a type's name is not data).
#: Comparisons a token may be an operand of (``AEXPR_IN``: ``x IN (…)``).
_COMPARING_KINDS = frozenset(
    {"AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_IN", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"}
)
_COMPARING_OPS = frozenset({"=", "<>", "!=", "@>", "<@"})


def _compares(body: Node) -> bool:
    if body.get("kind") not in _COMPARING_KINDS:
        return False
    names = strs(body.get("name") or [])
    return len(names) == 1 and names[0] in _COMPARING_OPS


def _bare_value(node: Any) -> bool:
    """A literal or a parameter as it is (cast, in an IN list, in an ARRAY[…])."""
    if isinstance(node, list):
        return bool(node) and all(_bare_value(n) for n in node)
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((kind, body),) = node.items()
    if kind in ("A_Const", "ParamRef"):
        return True
    if kind == "TypeCast":
        # the input of a type that keeps less than it is given computes on the value:
        # 'tok_…'::varchar(1) is its first character, compared with stored guesses
        arg = body.get("arg")
        return (
            lossless_cast(body.get("typeName") or {})
            and not (isinstance(arg, dict) and "TypeCast" in arg)
            and _bare_value(arg)
        )
    if kind == "List":
        return _bare_value(body.get("items") or [])
    if kind == "A_ArrayExpr":
        return _bare_value(body.get("elements") or [])
    return False


def _container(node: Any) -> bool:
    """Whether a bare value compared by ``@>``/``<@`` is an array or a JSON value, whose
    elements are compared whole: ``ARRAY[…]``, a cast to an array type, a literal in
    array or JSON syntax, or a parameter (whose value is checked at Bind:
    ``Analysis.param_contained``)."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((kind, body),) = node.items()
    if kind in ("A_ArrayExpr", "ParamRef"):
        return True
    if kind == "TypeCast":
        return bool((body.get("typeName") or {}).get("arrayBounds")) or _container(body.get("arg"))
    if kind == "A_Const":
        text = (body.get("sval") or {}).get("sval", "")
        return text.lstrip()[:1] in ("{", "[")
    return False


#: Built-ins that return an array, json or jsonb (``Expressions.reads_container``).
CONTAINER_FUNCTIONS = frozenset(
    {
        "array_agg",
        "array_append",
        "array_prepend",
        "array_cat",
        "array_remove",
        "array_replace",
        "string_to_array",
        "regexp_split_to_array",
        "to_json",
        "to_jsonb",
        "array_to_json",
        "row_to_json",
        "json_build_array",
        "jsonb_build_array",
        "json_build_object",
        "jsonb_build_object",
        "json_object",
        "jsonb_object",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "jsonb_set",
        "jsonb_insert",
        "jsonb_strip_nulls",
        "json_strip_nulls",
        "json_extract_path",
        "jsonb_extract_path",
        "jsonb_path_query_array",
    }
)


def _container_type(cast: Node) -> bool:
    """Whether a cast's type is an array type, json or jsonb."""
    type_name = cast.get("typeName") or {}
    if type_name.get("arrayBounds"):
        return True
    names = strs(type_name.get("names") or [])
    return bool(names) and (names[-1] in ("json", "jsonb") or names[-1].startswith("_"))


def _is_pii(lin: Lin) -> bool:
    """Whether a value is PII read from the database (not from a token)."""
    return bool(lin.entities) and not lin.token and not lin.unknown


_NOT_VALUES = frozenset({"typeName", "location"})
#: Nodes that hold no values: names, types, sort directions.
_LEAVES = frozenset(
    {
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "TypeName",
        "SQLValueFunction",
        "SetToDefault",
        "A_Star",
    }
)
#: Each node kind with a handler of its own; any other kind is walked generically.
_EXPR: dict[str, Callable[[Expressions, Any, Scope, Ctx], Lin]] = {
    **{name: _leaf for name in _LEAVES},
    **{name[2:]: getattr(Expressions, name) for name in dir(Expressions) if name.startswith("e_")},
}


#: The system columns every table row has (``ctid``: where it is stored, ``xmin``: the
#: transaction that wrote it ...): clean, and different per row.
SYSTEM_COLUMNS = frozenset(("ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"))


def _bare_column(node: Node) -> bool:
    """Whether an expression is a column reference, perhaps cast (``email``,
    ``c.email::text``, a whole row ``c``): whether it is NULL is the stored value's."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return isinstance(node, dict) and "ColumnRef" in node


def _tables_out(scope: Scope) -> Iterator[tuple[Scope, Item]]:
    """The table rows an unqualified system column may name, innermost level first
    (the server takes the one table of the level; an ambiguous name fails there)."""
    s: Scope | None = scope
    while s is not None:
        for item in s.items:
            if item.table:
                yield s, item
        s = s.parent


#: Aggregates whose value does not depend on the order of the rows they read (the
#: rest, ``array_agg``, ``string_agg``, ``json_agg``, ``any_value`` ..., list or pick
#: rows in it).
ORDER_FREE = frozenset(
    (
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "bit_and",
        "bit_or",
        "bit_xor",
        "bool_and",
        "bool_or",
        "every",
        "range_agg",
        "range_intersect_agg",
        *STATISTICS,
        "regr_count",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
    )
)

#: Aggregates that return one of their rows' values as it is (``_bounded_aggregate``).
_PICKING = frozenset(("min", "max", "bool_and", "bool_or", "every"))
#: Window functions that number rows (``_bounded_window``).
_NUMBERING = frozenset(("row_number", "rank", "dense_rank"))


def _bounded_aggregate(body: Node, name: str, stored: Callable[[Node], bool]) -> bool:
    """Whether an aggregate's value is one bounded number whatever rows it reads:
    ``count(*)``, ``count(col)``, ``min(col)``/``max(col)`` of a stored table's column
    as it is (``stored``), ``bool_and``/``bool_or``/``every`` of one — no FILTER,
    which one such call per id would turn into a bit per id in one row (``count(*)
    FILTER (WHERE id = 7)``), no computed argument (``bool_or(id = 7)``, ``min(CASE
    ...)``), nor a sub-select's column, which may be one (``bool_or(k7) FROM (SELECT id =
    7 k7 ...) s``), for the same reason."""
    if body.get("agg_filter") or body.get("agg_within_group"):
        return False
    args = body.get("args") or ()
    if name == "count" and body.get("agg_star"):
        return not args
    if name == "count" or name in _PICKING:
        return len(args) == 1 and _stored_as_is(args[0], stored)
    return False


def _nulls_only(node: Any, stored: Callable[[Node], bool]) -> bool:
    """Whether a FILTER asks only whether stored table columns are NULL (``phone IS
    NULL``, ``email IS NOT NULL OR phone IS NULL``), under AND, OR and NOT."""
    if not isinstance(node, dict):
        return False
    if "BoolExpr" in node:
        args = node["BoolExpr"].get("args") or ()
        return bool(args) and all(_nulls_only(arg, stored) for arg in args)
    test = node.get("NullTest")
    return test is not None and stored(test.get("arg"))


def _stored(item: Item, relation: bool) -> bool:
    """One stored table's row; ``relation``: or a relation's the snapshot knows."""
    if relation:
        return item.table or (item.schema is not None and not item.open)
    return item.table


def _stored_as_is(node: Node, stored: Callable[[Node], bool]) -> bool:
    """A stored table's column, perhaps cast (``id``, ``c.id::text``)."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return isinstance(node, dict) and "ColumnRef" in node and stored(node)


def _bounded_window(
    body: Node, name: str, over: Node, scope: Scope, stored: Callable[[Node], bool]
) -> bool:
    """Whether a window function's value is one bounded number per row: it numbers
    or counts the rows (``row_number()``, ``rank()``, ``dense_rank()``, ``count(*)``,
    ``count(col)``) of a window partitioned and ordered by stored columns as they are, with
    no frame offsets — ``count(*) OVER (PARTITION BY id = 7)``, ``rank() OVER (ORDER
    BY id <> 7)`` or a frame of ``7 FOLLOWING`` say whether id 7 was kept, one per
    window, side by side in one row."""
    if body.get("agg_filter"):
        return False
    args = body.get("args") or ()
    if name in _NUMBERING:
        if args:
            return False
    elif name != "count" or not (
        (body.get("agg_star") and not args) or (len(args) == 1 and _stored_as_is(args[0], stored))
    ):
        return False
    defs = [over]
    named = over.get("refname") or over.get("name")
    while named:
        # a named window, and the one it names in turn (``WINDOW w2 AS (w)``)
        found = (scope.window_defs or {}).get(named)
        if found is None or len(defs) > 20:
            return False
        defs.append(found)
        named = found.get("refname")
    for wd in defs:
        if wd.get("startOffset") or wd.get("endOffset"):
            return False
        for item in wd.get("partitionClause") or ():
            if not _stored_as_is(item, stored):
                return False
        for item in wd.get("orderClause") or ():
            if not _stored_as_is(item.get("SortBy", {}).get("node", item), stored):
                return False
    return True


def _asks(scope: Scope) -> list[tuple[Scope, Lin]]:
    """What each level from ``scope`` outward was asked so far (``Scope.asked``)."""
    out = []
    s: Scope | None = scope
    while s is not None:
        out.append((s, s.asked))
        s = s.parent
    return out


def _set_aside(asks: list[tuple[Scope, Lin]]) -> None:
    """Move what an aggregate's or window's own parts asked of each level since
    ``asks`` to ``Scope.aggregate_asked``: it kept none of the level's rows."""
    for s, before in asks:
        if s.asked is not before:
            s.aggregate_asked = s.aggregate_asked | s.asked
            s.asked = before


def _aggregate_level(refs: list[Any], scope: Scope) -> Scope:
    """The level an aggregate belongs to: ``scope``, unless its arguments name only
    columns of outer levels, then the nearest of those (as PostgreSQL reads it)."""
    if not refs:
        return scope
    levels = {id(ref[0]) for ref in refs}
    s: Scope | None = scope
    while s is not None:
        if id(s) in levels:
            return s
        s = s.parent
    return scope
