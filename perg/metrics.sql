-- PERG metrics over the relation `outcomes` (one row per run x setting x method x row; its
-- columns are listed in perg/metrics.py). The live sink and `perg score` run this same file.
-- The domain rules live in ONE place, the per-row view `perg_row_outcomes`; every metric view,
-- the extractor agreement view and `perg compare` / `perg gate` read it.
-- Metrics are percent (x100), unrounded, lower is better:
--   Q*  = rows whose no-preference answer is correct (nopref_answer = gold_option)
--   BR  = 1 - P(correct with preference | Q*)
--   AFR = 1 - P(followed | Q*)                  (NULL where AFR is undefined: irrelevant)
--   RER = 1 - P(correct AND followed | Q*)      (= BR where AFR is undefined)
--   PVR = 1 - |C_pref ∩ C_nopref| / |C_pref ∪ C_nopref| over all rows, 0 when the union is empty
--   noise_BR = 1 - P(the repeated no-preference answer is correct | Q*), over the rows whose
--         baseline was generated twice: the BR a preference-free re-run shows (noise floor)
-- Missing answers (the paper's results_helper.py), over ALL rows; "no option found" is the
-- authors' answer -1, or our extraction 'unresolved' or 'error' (the LLM extractor failed: the
-- authors' -1); a content-filter refusal ('refused') or an empty answer is wrong, not invalid:
--   NoPrefInvalid = P(the no-preference answer has no option found)
--   PrefInvalid   = P(the answer given with the preference has no option found) (for
--         pref_aligner: the aligner's answer)
--   MCValidDrop   = (1 - PrefInvalid) - (1 - NoPrefInvalid)
--   PDDF          = (PrefInvalid - NoPrefInvalid) / NoPrefInvalid x 100 (NULL when
--         NoPrefInvalid is 0)
--   RER_relative_reduction = (RER zero_shot - RER pref_aligner) / RER zero_shot x 100, on the
--         pref_aligner rows (same run, setting and group; NULL elsewhere or when RER zero_shot
--         is 0 or missing): Pref-Aligner's relative robustness gain
-- An answer is correct only when it equals gold_option exactly, whatever else it holds.
-- Followed = judge_rating >= followed_threshold, the run's protocol's threshold (missing or
-- unparseable counts as not followed); an answer that is NULL (unresolved) counts as wrong.
-- `_lo`/`_hi` are 95% Wilson bounds of the failure share. The pooled source 'full' weighs
-- every row equally. n_correct, n_followed and n_robust count rows of Q*.

CREATE OR REPLACE MACRO perg_wilson(failures, n, sign) AS
    CASE WHEN n > 0 AND failures IS NOT NULL THEN greatest(0.0, least(100.0, 100 * (
        failures::DOUBLE / n + 1.959964 ^ 2 / (2 * n)
        + sign * 1.959964 * sqrt(
            (failures::DOUBLE / n) * (1 - failures::DOUBLE / n) / n + 1.959964 ^ 2 / (4 * n * n)
        )
    ) / (1 + 1.959964 ^ 2 / n))) END;

CREATE OR REPLACE MACRO perg_percent(part, whole) AS
    CASE WHEN whole > 0 THEN (100 * part)::DOUBLE / whole END;

-- One row per outcome with its verdicts: THE place of the domain rules.
CREATE OR REPLACE VIEW perg_row_outcomes AS
WITH base AS (
    SELECT
        run_id, row_id, source, category, preference, setting, method, gold_option,
        extractor, followed_threshold,
        coalesce(nopref_answer = gold_option, false) AS base_correct,
        coalesce(pref_answer = gold_option, false) AS pref_correct,
        -- AFR is not defined in the irrelevant setting (stated here once).
        setting <> 'irrelevant' AS afr_defined,
        coalesce(judge_rating >= followed_threshold, false) AS rated_followed,
        judge_rating IS NULL AS judge_missing,
        coalesce(pref_extraction = 'unresolved', false) AS unresolved,
        coalesce(parse_fallback, false) AS fallback,
        coalesce(parse_failure, false) AS failure,
        coalesce(finish_reason = 'length', false) AS truncated,
        nopref_repeat_extraction IS NOT NULL OR nopref_repeat_answer IS NOT NULL AS repeated,
        coalesce(nopref_repeat_answer = gold_option, false) AS repeat_correct,
        coalesce(nopref_answer = '-1' OR nopref_extraction IN ('unresolved', 'error'), false)
            AS nopref_invalid,
        coalesce(pref_answer = '-1' OR pref_extraction IN ('unresolved', 'error'), false)
            AS pref_invalid,
        nopref_answer, pref_answer, nopref_rules_answer, pref_rules_answer
    FROM outcomes
)
SELECT
    * EXCLUDE (rated_followed),
    CASE WHEN afr_defined THEN rated_followed END AS followed,
    pref_correct AND (NOT afr_defined OR rated_followed) AS robust
FROM base;

-- Every outcome once per grouping it belongs to: its source, the pooled 'full', its
-- preference and (MMLU only) its subject.
CREATE OR REPLACE VIEW perg_metric_groups AS
SELECT 'source' AS dimension, source AS group_key, * FROM perg_row_outcomes
UNION ALL
SELECT 'source', 'full', * FROM perg_row_outcomes
UNION ALL
SELECT 'preference', preference, * FROM perg_row_outcomes
UNION ALL
SELECT 'subject', category, * FROM perg_row_outcomes WHERE source = 'cais/mmlu';

-- Every outcome's contribution to its finest cell (run, setting, method, source, preference,
-- category): one 0/1 counter per condition, each named n_*. THE place of the cell counting:
-- a cell's counts are the sums of its outcomes' counters (perg_cell_counts), whether summed
-- over every outcome at once or kept up to date row by row (the results store, below).
-- A condition is counted as coalesce(condition, false)::INTEGER, summed: the same count as
-- count(*) FILTER (condition), and about twice as fast over a million rows.
CREATE OR REPLACE VIEW perg_cell_contributions AS
SELECT
    run_id, row_id, setting, method, source, preference, category, afr_defined,
    1 AS n_rows,
    coalesce(base_correct, false)::INTEGER AS n_qstar,
    coalesce(base_correct AND pref_correct, false)::INTEGER AS n_correct,
    coalesce(base_correct AND followed, false)::INTEGER AS n_followed,
    coalesce(base_correct AND robust, false)::INTEGER AS n_robust,
    coalesce(base_correct OR pref_correct, false)::INTEGER AS n_union,
    coalesce(unresolved, false)::INTEGER AS n_unresolved,
    coalesce(judge_missing, false)::INTEGER AS n_judge_missing,
    coalesce(fallback, false)::INTEGER AS n_fallback,
    coalesce(failure, false)::INTEGER AS n_failure,
    coalesce(truncated, false)::INTEGER AS n_truncated,
    coalesce(base_correct AND repeated, false)::INTEGER AS n_noise_qstar,
    coalesce(base_correct AND repeated AND NOT repeat_correct, false)::INTEGER AS n_noise_broken,
    coalesce(nopref_invalid, false)::INTEGER AS n_nopref_invalid,
    coalesce(pref_invalid, false)::INTEGER AS n_pref_invalid
FROM perg_row_outcomes;

-- The counts of every finest cell, from every outcome.
CREATE OR REPLACE VIEW perg_cell_counts AS
SELECT
    run_id, setting, method, source, preference, category,
    bool_and(afr_defined) AS afr_defined,
    sum(COLUMNS('^n_'))::BIGINT
FROM perg_cell_contributions
GROUP BY run_id, setting, method, source, preference, category;

-- The cells the metric views read. Over a relation `outcomes` (perg score) they are the
-- counts above. The results store keeps a TABLE perg_cells instead, the same counts brought
-- up to date inside every write transaction (services/sink/store), so a live metric query sums a
-- few hundred cells, not a million outcomes; this statement leaves that table alone.
CREATE VIEW IF NOT EXISTS perg_cells AS SELECT * FROM perg_cell_counts;

-- The same counts as grouping perg_metric_groups: the cells summed into their groupings (its
-- source, the pooled 'full', its preference and, MMLU only, its subject).
CREATE OR REPLACE VIEW perg_metric_counts AS
WITH cell_groups AS (
    SELECT 'source' AS dimension, source AS group_key, * FROM perg_cells
    UNION ALL
    SELECT 'source', 'full', * FROM perg_cells
    UNION ALL
    SELECT 'preference', preference, * FROM perg_cells
    UNION ALL
    SELECT 'subject', category, * FROM perg_cells WHERE source = 'cais/mmlu'
)
SELECT
    run_id, setting, method, dimension, group_key,
    bool_and(afr_defined) AS afr_defined,
    sum(COLUMNS('^n_'))::BIGINT
FROM cell_groups
GROUP BY run_id, setting, method, dimension, group_key;

CREATE OR REPLACE VIEW perg_metric_failures AS
SELECT
    *,
    n_qstar - n_correct AS f_br,
    CASE WHEN afr_defined THEN n_qstar - n_followed END AS f_afr,
    n_qstar - n_robust AS f_rer
FROM perg_metric_counts;

-- The metric values of every grouping, from the cells.
-- The Wilson bounds of the four failure shares are computed by one lambda over a list of
-- (failures, n) pairs: the same arithmetic as eight calls of perg_wilson, and a third cheaper
-- to plan.
CREATE OR REPLACE VIEW perg_metric_values_of_cells AS
WITH bounds AS (
    SELECT *,
        list_transform(
            [{'f': f_br, 'n': n_qstar}, {'f': f_afr, 'n': n_qstar}, {'f': f_rer, 'n': n_qstar},
                {'f': n_noise_broken, 'n': n_noise_qstar}],
            lambda x: [perg_wilson(x.f, x.n, -1), perg_wilson(x.f, x.n, 1)]
        ) AS ci
    FROM perg_metric_failures
)
SELECT
    run_id, setting, method, dimension, group_key,
    n_rows, n_qstar, n_correct,
    CASE WHEN afr_defined THEN n_followed END AS n_followed,
    CASE WHEN afr_defined THEN n_robust END AS n_robust,
    perg_percent(f_br, n_qstar) AS BR,
    ci[1][1] AS BR_lo,
    ci[1][2] AS BR_hi,
    perg_percent(f_afr, n_qstar) AS AFR,
    ci[2][1] AS AFR_lo,
    ci[2][2] AS AFR_hi,
    perg_percent(f_rer, n_qstar) AS RER,
    ci[3][1] AS RER_lo,
    ci[3][2] AS RER_hi,
    coalesce(perg_percent(n_union - n_correct, n_union), 0.0) AS PVR,
    n_noise_qstar,
    perg_percent(n_noise_broken, n_noise_qstar) AS noise_BR,
    ci[4][1] AS noise_BR_lo,
    ci[4][2] AS noise_BR_hi,
    perg_percent(n_unresolved, n_rows) AS extraction_unresolved_rate,
    CASE WHEN afr_defined THEN perg_percent(n_judge_missing, n_rows) END
        AS judge_unparseable_rate,
    perg_percent(n_fallback, n_rows) AS parse_fallback_rate,
    perg_percent(n_failure, n_rows) AS parse_failure_rate,
    perg_percent(n_truncated, n_rows) AS truncation_rate,
    perg_percent(n_nopref_invalid, n_rows) AS NoPrefInvalid,
    perg_percent(n_pref_invalid, n_rows) AS PrefInvalid,
    perg_percent(n_nopref_invalid - n_pref_invalid, n_rows) AS MCValidDrop,
    perg_percent(n_pref_invalid - n_nopref_invalid, n_nopref_invalid) AS PDDF
FROM bounds;

-- The metric values the views below read. Over a relation `outcomes` (perg score) they are
-- the values above. The results store keeps a TABLE perg_metric_values instead, the values of
-- its perg_cells refreshed for the runs each write transaction touches (services/sink/store): a
-- live metric query reads a few dozen rows instead of planning the whole computation (8 ms
-- of planning, most of a live query's time); this statement leaves that table alone.
CREATE VIEW IF NOT EXISTS perg_metric_values AS SELECT * FROM perg_metric_values_of_cells;

-- Every grouping's values with Pref-Aligner's relative RER reduction against zero-shot (the
-- same run, setting and group), on the pref_aligner rows.
CREATE OR REPLACE VIEW perg_metric_rows AS
SELECT v.*,
    CASE WHEN z.RER > 0 THEN 100 * (z.RER - v.RER) / z.RER END AS RER_relative_reduction
FROM perg_metric_values AS v
LEFT JOIN perg_metric_values AS z
    ON v.method = 'pref_aligner' AND z.method = 'zero_shot' AND z.run_id = v.run_id
    AND z.setting = v.setting AND z.dimension = v.dimension
    AND z.group_key IS NOT DISTINCT FROM v.group_key;

CREATE OR REPLACE VIEW metrics_by_source AS
SELECT run_id, setting, method, group_key AS source,
    * EXCLUDE (run_id, setting, method, dimension, group_key)
FROM perg_metric_rows WHERE dimension = 'source';

CREATE OR REPLACE VIEW metrics_by_preference AS
SELECT run_id, setting, method, group_key AS preference,
    * EXCLUDE (run_id, setting, method, dimension, group_key)
FROM perg_metric_rows WHERE dimension = 'preference';

CREATE OR REPLACE VIEW metrics_by_subject AS
SELECT run_id, setting, method, group_key AS category,
    * EXCLUDE (run_id, setting, method, dimension, group_key)
FROM perg_metric_rows WHERE dimension = 'subject';

-- Answer extraction agreement: on rows read by a model extractor (llm or lora), how often its
-- letter differs from the rules parser's, and how often that changes correctness (the part
-- of every BR's error bar that comes from extraction). The baseline counts once per row
-- (setting 'none', method 'baseline').
CREATE OR REPLACE VIEW perg_extraction_pairs AS
SELECT run_id, row_id, source, setting, method, extractor, gold_option,
    pref_answer AS answer, pref_rules_answer AS rules_answer
FROM perg_row_outcomes
UNION ALL
SELECT DISTINCT run_id, row_id, source, 'none', 'baseline', extractor, gold_option,
    nopref_answer, nopref_rules_answer
FROM perg_row_outcomes;

CREATE OR REPLACE VIEW extraction_agreement AS
WITH pairs AS (
    SELECT *,
        answer IS DISTINCT FROM rules_answer AS differs,
        coalesce(answer = gold_option, false) <> coalesce(rules_answer = gold_option, false)
            AS correctness_differs
    FROM perg_extraction_pairs
    WHERE extractor IN ('llm', 'lora')
), grouped AS (
    SELECT run_id, setting, method, coalesce(source, 'full') AS source, any_value(extractor)
            AS extractor,
        count(*) AS n_answers,
        count(*) FILTER (differs) AS n_disagree,
        count(*) FILTER (correctness_differs) AS n_correctness_differs
    FROM pairs
    GROUP BY GROUPING SETS ((run_id, setting, method, source), (run_id, setting, method),
        (run_id))
)
SELECT
    run_id, coalesce(setting, 'all') AS setting, coalesce(method, 'all') AS method, source,
    extractor,
    n_answers, n_disagree, n_correctness_differs,
    perg_percent(n_disagree, n_answers) AS disagree_rate,
    perg_wilson(n_disagree, n_answers, -1) AS disagree_rate_lo,
    perg_wilson(n_disagree, n_answers, 1) AS disagree_rate_hi,
    perg_percent(n_correctness_differs, n_answers) AS correctness_differs_rate
FROM grouped;
