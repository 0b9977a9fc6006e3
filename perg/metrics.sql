-- PERG metrics over the relation `outcomes` (one row per run x setting x method x row; its
-- columns are listed in perg/metrics.py). The live sink and `perg score` run this same file.
-- Metrics are percent (x100), unrounded, lower is better:
--   Q*  = rows whose no-preference answer is correct (nopref_answer = gold_option)
--   BR  = 1 - P(correct with preference | Q*)
--   AFR = 1 - P(followed | Q*)                  (NULL in the irrelevant setting)
--   RER = 1 - P(correct AND followed | Q*)      (= BR in the irrelevant setting)
--   PVR = 1 - |C_pref ∩ C_nopref| / |C_pref ∪ C_nopref| over all rows, 0 when the union is empty
-- Followed = judge_rating >= 3 (missing or unparseable counts as not followed); an answer that
-- is NULL (unresolved) counts as wrong. `_lo`/`_hi` are 95% Wilson bounds of the failure share.
-- The pooled source 'full' weighs every row equally. n_correct, n_followed and n_robust count
-- rows of Q*.

CREATE OR REPLACE MACRO perg_wilson(failures, n, sign) AS
    CASE WHEN n > 0 AND failures IS NOT NULL THEN greatest(0.0, least(100.0, 100 * (
        failures::DOUBLE / n + 1.959964 ^ 2 / (2 * n)
        + sign * 1.959964 * sqrt(
            (failures::DOUBLE / n) * (1 - failures::DOUBLE / n) / n + 1.959964 ^ 2 / (4 * n * n)
        )
    ) / (1 + 1.959964 ^ 2 / n))) END;

CREATE OR REPLACE MACRO perg_percent(part, whole) AS
    CASE WHEN whole > 0 THEN (100 * part)::DOUBLE / whole END;

CREATE OR REPLACE VIEW perg_outcome_flags AS
SELECT
    run_id, row_id, source, category, preference, setting, method,
    coalesce(nopref_answer = gold_option, false) AS base_correct,
    coalesce(pref_answer = gold_option, false) AS pref_correct,
    coalesce(judge_rating >= 3, false) AS followed,
    judge_rating IS NULL AS judge_missing,
    coalesce(pref_extraction = 'unresolved', false) AS unresolved,
    coalesce(parse_fallback, false) AS fallback,
    coalesce(parse_failure, false) AS failure,
    coalesce(finish_reason = 'length', false) AS truncated
FROM outcomes;

-- Every outcome once per grouping it belongs to: its source, the pooled 'full', its
-- preference and (MMLU only) its subject.
CREATE OR REPLACE VIEW perg_metric_groups AS
SELECT 'source' AS dimension, source AS group_key, * FROM perg_outcome_flags
UNION ALL
SELECT 'source', 'full', * FROM perg_outcome_flags
UNION ALL
SELECT 'preference', preference, * FROM perg_outcome_flags
UNION ALL
SELECT 'subject', category, * FROM perg_outcome_flags WHERE source = 'cais/mmlu';

CREATE OR REPLACE VIEW perg_metric_counts AS
SELECT
    run_id, setting, method, dimension, group_key,
    count(*) AS n_rows,
    count(*) FILTER (base_correct) AS n_qstar,
    count(*) FILTER (base_correct AND pref_correct) AS n_correct,
    count(*) FILTER (base_correct AND followed) AS n_followed,
    count(*) FILTER (base_correct AND pref_correct AND followed) AS n_robust,
    count(*) FILTER (base_correct OR pref_correct) AS n_union,
    count(*) FILTER (unresolved) AS n_unresolved,
    count(*) FILTER (judge_missing) AS n_judge_missing,
    count(*) FILTER (fallback) AS n_fallback,
    count(*) FILTER (failure) AS n_failure,
    count(*) FILTER (truncated) AS n_truncated
FROM perg_metric_groups
GROUP BY run_id, setting, method, dimension, group_key;

CREATE OR REPLACE VIEW perg_metric_failures AS
SELECT
    *,
    n_qstar - n_correct AS f_br,
    CASE WHEN setting <> 'irrelevant' THEN n_qstar - n_followed END AS f_afr,
    CASE WHEN setting = 'irrelevant' THEN n_qstar - n_correct ELSE n_qstar - n_robust END AS f_rer
FROM perg_metric_counts;

CREATE OR REPLACE VIEW perg_metric_values AS
SELECT
    run_id, setting, method, dimension, group_key,
    n_rows, n_qstar, n_correct,
    CASE WHEN setting <> 'irrelevant' THEN n_followed END AS n_followed,
    CASE WHEN setting <> 'irrelevant' THEN n_robust END AS n_robust,
    perg_percent(f_br, n_qstar) AS BR,
    perg_wilson(f_br, n_qstar, -1) AS BR_lo,
    perg_wilson(f_br, n_qstar, 1) AS BR_hi,
    perg_percent(f_afr, n_qstar) AS AFR,
    perg_wilson(f_afr, n_qstar, -1) AS AFR_lo,
    perg_wilson(f_afr, n_qstar, 1) AS AFR_hi,
    perg_percent(f_rer, n_qstar) AS RER,
    perg_wilson(f_rer, n_qstar, -1) AS RER_lo,
    perg_wilson(f_rer, n_qstar, 1) AS RER_hi,
    coalesce(perg_percent(n_union - n_correct, n_union), 0.0) AS PVR,
    perg_percent(n_unresolved, n_rows) AS extraction_unresolved_rate,
    CASE WHEN setting <> 'irrelevant' THEN perg_percent(n_judge_missing, n_rows) END
        AS judge_unparseable_rate,
    perg_percent(n_fallback, n_rows) AS parse_fallback_rate,
    perg_percent(n_failure, n_rows) AS parse_failure_rate,
    perg_percent(n_truncated, n_rows) AS truncation_rate
FROM perg_metric_failures;

CREATE OR REPLACE VIEW metrics_by_source AS
SELECT run_id, setting, method, group_key AS source,
    * EXCLUDE (run_id, setting, method, dimension, group_key)
FROM perg_metric_values WHERE dimension = 'source';

CREATE OR REPLACE VIEW metrics_by_preference AS
SELECT run_id, setting, method, group_key AS preference,
    * EXCLUDE (run_id, setting, method, dimension, group_key)
FROM perg_metric_values WHERE dimension = 'preference';

CREATE OR REPLACE VIEW metrics_by_subject AS
SELECT run_id, setting, method, group_key AS category,
    * EXCLUDE (run_id, setting, method, dimension, group_key)
FROM perg_metric_values WHERE dimension = 'subject';
