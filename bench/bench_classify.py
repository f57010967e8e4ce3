"""Classifier micro-benchmark: what one statement costs on the proxy's hot path.

Targets from issue 3: cached decision <= 10 µs, cold small statement <= 100 µs,
cold ~2 KB analytic query <= 1 ms. "Cold" clears the cache before every call, so
it includes pglast's parse, JSON decoding, the walk, the fingerprint and the
cache store; "cached" is a repeat of identical text (drivers re-send the same
``$n`` text), "cached-normalized" a repeat with different literal values (answered
by the literal mask, or by pglast's normalize where the mask cannot read the text).

Run: ``python -m bench.bench_classify`` (prints JSON).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from dbgate.policy.classify import classify, clear_cache

SMALL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"

ANALYTIC = """
WITH paid AS (
    SELECT o.customer_id, o.id AS order_id, o.total, o.created_at,
           date_trunc('month', o.created_at) AS month
    FROM orders o
    JOIN payments p ON p.order_id = o.id
    WHERE o.status IN ('paid', 'shipped', 'delivered')
      AND o.created_at >= now() - interval '18 months'
      AND p.amount > 0
),
monthly AS (
    SELECT customer_id, month, count(*) AS orders, sum(total) AS revenue,
           avg(total) AS avg_order, max(total) AS biggest
    FROM paid
    GROUP BY customer_id, month
),
ranked AS (
    SELECT m.*, rank() OVER (PARTITION BY month ORDER BY revenue DESC) AS rnk,
           lag(revenue) OVER (PARTITION BY customer_id ORDER BY month) AS prev_revenue,
           sum(revenue) OVER (PARTITION BY customer_id ORDER BY month
                              ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS rolling_3m
    FROM monthly m
)
SELECT r.month,
       r.customer_id,
       c.created_at::date AS customer_since,
       r.orders,
       round(r.revenue::numeric, 2) AS revenue,
       round(r.avg_order::numeric, 2) AS avg_order,
       r.biggest,
       CASE WHEN r.prev_revenue IS NULL THEN 'new'
            WHEN r.revenue > r.prev_revenue * 1.2 THEN 'growing'
            WHEN r.revenue < r.prev_revenue * 0.8 THEN 'shrinking'
            ELSE 'steady' END AS trend,
       coalesce(r.rolling_3m, 0) AS rolling_3m,
       (SELECT count(*) FROM orders o2 WHERE o2.customer_id = r.customer_id
          AND o2.status = 'refunded') AS refunds,
       extract(year FROM r.month) AS yr,
       to_char(r.month, 'YYYY-MM') AS label
FROM ranked r
JOIN customers c ON c.id = r.customer_id
WHERE r.rnk <= 25
  AND c.created_at < now() - interval '30 days'
  AND NOT EXISTS (SELECT 1 FROM payments p2 JOIN orders o3 ON o3.id = p2.order_id
                  WHERE o3.customer_id = r.customer_id AND p2.amount < 0)
ORDER BY r.month DESC, r.revenue DESC, r.customer_id
LIMIT 500
"""


def _per_call_us(fn: Callable[[], object], *, rounds: int = 7, number: int = 2000) -> float:
    """Best (minimum) over rounds of the mean per-call CPU time, in microseconds.

    CPU time of this thread, not wall time: on a shared CI host (load average well
    above the core count) wall time mostly measures the run queue. The minimum over
    rounds is the least-disturbed estimate (timeit's advice).
    """
    samples = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(number):
            fn()
        samples.append((time.thread_time() - t0) / number * 1e6)
    return min(samples)


def run() -> dict[str, float]:  # values are µs except the two informational fields
    """Measure and return µs per call for each scenario (plus the analytic query size)."""
    clear_cache()
    classify(SMALL)
    cached = _per_call_us(lambda: classify(SMALL), number=20000)

    literals = [f"SELECT * FROM orders WHERE id = {i}" for i in range(20000)]
    clear_cache()
    classify(literals[0])
    it = iter(literals[1:])
    cached_normalized = _per_call_us(lambda: classify(next(it)), rounds=3, number=6000)

    def cold_small() -> None:
        clear_cache()
        classify(SMALL)

    def cold_analytic() -> None:
        clear_cache()
        classify(ANALYTIC)

    result = {
        "cached_decision_us": round(cached, 2),
        "cached_normalized_us": round(cached_normalized, 2),
        "cold_small_us": round(_per_call_us(cold_small, number=2000), 1),
        "cold_analytic_us": round(_per_call_us(cold_analytic, rounds=15, number=100), 1),
        "analytic_query_bytes": len(ANALYTIC.encode()),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    clear_cache()
    return result


TARGETS = {"cached_decision_us": 10.0, "cold_small_us": 100.0, "cold_analytic_us": 1000.0}

if __name__ == "__main__":
    res = run()
    res_out: dict[str, object] = dict(res)
    res_out["within_targets"] = all(res[k] <= v for k, v in TARGETS.items())
    print(json.dumps(res_out, indent=2))
