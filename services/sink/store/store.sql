-- The results store: tables the sink writes (one row per idempotency key, upserted) and the
-- `outcomes` view that the metric views of metrics.sql read. Safe to run on every start.

-- One row per run: its spec, the judge threshold of its protocol (followed = rating >= it),
-- its answer extractor (rules, llm or lora; rules_answer columns keep the rules parser's letter
-- beside it) and its decoding profile.
CREATE TABLE IF NOT EXISTS runs (
    run_id           VARCHAR PRIMARY KEY,
    created_at       TIMESTAMP,
    model            VARCHAR,
    model_url        VARCHAR,
    judge_model      VARCHAR,
    judge_url        VARCHAR,
    protocol         VARCHAR,
    protocol_sha256  VARCHAR,
    dataset_path     VARCHAR,
    dataset_sha256   VARCHAR,
    selection        VARCHAR,
    settings         VARCHAR[],
    methods          VARCHAR[],
    n_rows           INTEGER,
    expected_results INTEGER,
    followed_threshold INTEGER,
    extractor        VARCHAR,
    decoding_profile VARCHAR,
    spec             JSON,
    lineage          VARCHAR,  -- perg submit --lineage: the deployed model evaluated
    version          VARCHAR,  -- perg submit --version: the version under test
    shuffle_seed     BIGINT    -- the seed of the work's order (shuffled within sources)
);

-- The no-preference baseline: once per (run, row), shared by every setting and method.
CREATE TABLE IF NOT EXISTS baselines (
    run_id        VARCHAR,
    row_id        INTEGER,
    source        VARCHAR,
    category      VARCHAR,
    gold_option   VARCHAR,
    response      VARCHAR,
    answer        VARCHAR,
    extraction    VARCHAR,
    finish_reason VARCHAR,
    tokens_in     BIGINT,
    tokens_out    BIGINT,
    latency_s     DOUBLE,
    retries       INTEGER,
    extractor     VARCHAR,
    rules_answer  VARCHAR,
    thinking      VARCHAR,
    stored_at     TIMESTAMP,
    PRIMARY KEY (run_id, row_id)
);

-- One row per (run, row, setting, method): the preference-conditioned answer and its verdict.
CREATE TABLE IF NOT EXISTS results (
    run_id         VARCHAR,
    row_id         INTEGER,
    setting        VARCHAR,
    method         VARCHAR,
    source         VARCHAR,
    category       VARCHAR,
    preference     VARCHAR,
    gold_option    VARCHAR,
    response       VARCHAR,
    answer         VARCHAR,
    extraction     VARCHAR,
    judge_rating   INTEGER,
    judge_outcome  VARCHAR,
    judge_raw      VARCHAR,
    parse_fallback BOOLEAN,
    parse_failure  BOOLEAN,
    finish_reason  VARCHAR,
    tokens_in      BIGINT,
    tokens_out     BIGINT,
    latency_s      DOUBLE,
    model_calls    INTEGER,
    retries        INTEGER,
    extractor      VARCHAR,
    rules_answer   VARCHAR,
    thinking       VARCHAR,
    rewrite_read   VARCHAR,
    stored_at      TIMESTAMP,
    PRIMARY KEY (run_id, row_id, setting, method)
);

-- The repeated no-preference answer of runs with a noise floor (--repeat-baseline).
CREATE TABLE IF NOT EXISTS baseline_repeats (
    run_id        VARCHAR,
    row_id        INTEGER,
    response      VARCHAR,
    answer        VARCHAR,
    extraction    VARCHAR,
    rules_answer  VARCHAR,
    finish_reason VARCHAR,
    stored_at     TIMESTAMP,
    PRIMARY KEY (run_id, row_id)
);

CREATE TABLE IF NOT EXISTS progress (
    run_id   VARCHAR,
    row_id   INTEGER,
    setting  VARCHAR,
    method   VARCHAR,
    stage    VARCHAR,
    retries  INTEGER,
    seen_at  TIMESTAMP,
    PRIMARY KEY (run_id, row_id, setting, method, stage)
);

-- Failed messages: `original` keeps at most 64 KiB; size and hash describe the whole one.
CREATE TABLE IF NOT EXISTS dead_letters (
    service    VARCHAR,
    topic      VARCHAR,
    "partition" INTEGER,
    "offset"   BIGINT,
    reason     VARCHAR,
    original   BLOB,
    original_size   BIGINT,
    original_sha256 VARCHAR,
    failed_at  TIMESTAMP,
    run_id     VARCHAR,
    row_id     INTEGER,
    setting    VARCHAR,
    method     VARCHAR,
    stage      VARCHAR,
    PRIMARY KEY (service, topic, "partition", "offset")
);

-- Cancelled runs (perg cancel, the sequential gate): the last cancellation of each run.
CREATE TABLE IF NOT EXISTS run_cancels (
    run_id       VARCHAR PRIMARY KEY,
    cancelled_at TIMESTAMP,
    reason       VARCHAR
);

-- Acceptances (perg accept): an append-only history, never a rewrite of results; the latest
-- acceptance of a lineage is its reference.
CREATE TABLE IF NOT EXISTS acceptances (
    run_id      VARCHAR,
    lineage     VARCHAR,
    accepted_at TIMESTAMP,
    note        VARCHAR,
    PRIMARY KEY (run_id, accepted_at)
);

-- Gate verdicts (perg gate): an append-only history.
CREATE TABLE IF NOT EXISTS gate_decisions (
    candidate_run_id VARCHAR,
    reference_run_id VARCHAR,
    lineage          VARCHAR,
    passed           BOOLEAN,
    decided_at       TIMESTAMP,
    summary          VARCHAR,
    PRIMARY KEY (candidate_run_id, decided_at)
);

-- Columns added after the first release: stores made before them upgrade in place.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS followed_threshold INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS extractor VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS decoding_profile VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS lineage VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS version VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS shuffle_seed BIGINT;
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS extractor VARCHAR;
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS rules_answer VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS extractor VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS rules_answer VARCHAR;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS original_size BIGINT;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS original_sha256 VARCHAR;
-- a thinking model's thinking, apart from the answer; how a JSON rewrite was read
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS thinking VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS thinking VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS rewrite_read VARCHAR;

CREATE OR REPLACE VIEW outcomes AS
SELECT
    r.run_id,
    r.row_id,
    r.source,
    r.category,
    r.preference,
    r.setting,
    r.method,
    r.gold_option,
    b.answer AS nopref_answer,
    r.answer AS pref_answer,
    r.judge_rating,
    r.judge_outcome,
    b.extraction AS nopref_extraction,
    r.extraction AS pref_extraction,
    r.parse_fallback,
    r.parse_failure,
    r.finish_reason,
    -- the run's protocol's threshold; runs stored before it was recorded: the judge's outcome
    -- (made with that threshold) stands in
    coalesce(ru.followed_threshold, CASE WHEN r.judge_outcome = 'followed' THEN r.judge_rating
        WHEN r.judge_rating IS NOT NULL THEN r.judge_rating + 1 END) AS followed_threshold,
    r.extractor,
    b.rules_answer AS nopref_rules_answer,
    r.rules_answer AS pref_rules_answer,
    x.answer AS nopref_repeat_answer,
    x.extraction AS nopref_repeat_extraction
FROM results AS r
JOIN baselines AS b USING (run_id, row_id)
LEFT JOIN runs AS ru USING (run_id)
LEFT JOIN baseline_repeats AS x USING (run_id, row_id);
