-- Lineages, cancellations and acceptances over the store's tables (after metrics.sql: the
-- history reads its kept metric cells). Safe to run on every start.

-- Every run's state: 'done' (every expected result and baseline stored), else 'cancelled'
-- (perg cancel, the sequential gate), else 'running'; `partial` = not done.
CREATE OR REPLACE VIEW run_states AS
WITH stored AS (
    SELECT run_id, count(*) AS n FROM results GROUP BY run_id
), stored_baselines AS (
    SELECT run_id, count(*) AS n FROM baselines GROUP BY run_id
), counted AS (
    SELECT r.run_id, r.lineage, r.version, r.created_at, r.shuffle_seed, r.n_rows,
        r.expected_results, coalesce(s.n, 0) AS results_stored,
        coalesce(b.n, 0) AS baselines_stored, c.cancelled_at, c.reason AS cancel_reason,
        coalesce(s.n, 0) >= r.expected_results AND coalesce(b.n, 0) >= r.n_rows AS done
    FROM runs AS r
    LEFT JOIN stored AS s USING (run_id)
    LEFT JOIN stored_baselines AS b USING (run_id)
    LEFT JOIN run_cancels AS c USING (run_id)
)
SELECT * EXCLUDE (done),
    CASE WHEN done THEN 'done' WHEN cancelled_at IS NOT NULL THEN 'cancelled' ELSE 'running' END
        AS state,
    NOT done AS partial
FROM counted;

-- One row per run of a lineage, oldest first: version, rows, |Q*| (rows whose no-preference
-- answer is correct), BR / AFR / RER pooled over every setting and method of the run (each
-- outcome weighs equally, source 'full') with 95% Wilson bounds, noise BR where the run
-- measured it (--repeat-baseline), the latest gate verdict on it and whether it was accepted.
CREATE OR REPLACE VIEW lineage_history AS
WITH pooled AS (
    SELECT run_id,
        sum(n_qstar) AS n_outcomes,
        sum(f_br) AS f_br,
        sum(f_afr) AS f_afr,
        sum(n_qstar) FILTER (afr_defined) AS n_afr,
        sum(f_rer) AS f_rer,
        sum(n_noise_broken) AS f_noise,
        sum(n_noise_qstar) AS n_noise
    FROM perg_metric_failures
    WHERE dimension = 'source' AND group_key = 'full'
    GROUP BY run_id
), qstar AS (
    SELECT run_id, count(*) FILTER (answer = gold_option) AS n_qstar
    FROM baselines GROUP BY run_id
), verdicts AS (
    SELECT candidate_run_id AS run_id, passed, reference_run_id, decided_at
    FROM gate_decisions
    QUALIFY row_number() OVER (PARTITION BY candidate_run_id ORDER BY decided_at DESC) = 1
), accepted AS (
    SELECT run_id, max(accepted_at) AS accepted_at FROM acceptances GROUP BY run_id
)
SELECT
    s.lineage,
    row_number() OVER (PARTITION BY s.lineage ORDER BY s.created_at, s.run_id) AS position,
    s.run_id, s.version, s.created_at, s.state, s.n_rows, s.results_stored,
    coalesce(q.n_qstar, 0) AS n_qstar,
    perg_percent(p.f_br, p.n_outcomes) AS BR,
    perg_wilson(p.f_br, p.n_outcomes, -1) AS BR_lo,
    perg_wilson(p.f_br, p.n_outcomes, 1) AS BR_hi,
    perg_percent(p.f_afr, p.n_afr) AS AFR,
    perg_wilson(p.f_afr, p.n_afr, -1) AS AFR_lo,
    perg_wilson(p.f_afr, p.n_afr, 1) AS AFR_hi,
    perg_percent(p.f_rer, p.n_outcomes) AS RER,
    perg_wilson(p.f_rer, p.n_outcomes, -1) AS RER_lo,
    perg_wilson(p.f_rer, p.n_outcomes, 1) AS RER_hi,
    perg_percent(p.f_noise, p.n_noise) AS noise_BR,
    CASE WHEN v.passed THEN 'pass' WHEN NOT v.passed THEN 'fail' END AS verdict,
    v.reference_run_id,
    a.accepted_at IS NOT NULL AS accepted,
    a.accepted_at
FROM run_states AS s
LEFT JOIN pooled AS p USING (run_id)
LEFT JOIN qstar AS q USING (run_id)
LEFT JOIN verdicts AS v USING (run_id)
LEFT JOIN accepted AS a USING (run_id)
WHERE s.lineage IS NOT NULL;
