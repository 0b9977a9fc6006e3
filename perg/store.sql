-- The results store: tables the sink writes (one row per idempotency key, upserted) and the
-- `outcomes` view that the metric views of metrics.sql read. Safe to run on every start.

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
    spec             JSON
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
    stored_at      TIMESTAMP,
    PRIMARY KEY (run_id, row_id, setting, method)
);

-- Stage completions seen on the generations topic, for per-stage progress.
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

CREATE TABLE IF NOT EXISTS dead_letters (
    service    VARCHAR,
    topic      VARCHAR,
    "partition" INTEGER,
    "offset"   BIGINT,
    reason     VARCHAR,
    original   BLOB,
    failed_at  TIMESTAMP,
    run_id     VARCHAR,
    row_id     INTEGER,
    setting    VARCHAR,
    method     VARCHAR,
    stage      VARCHAR,
    PRIMARY KEY (service, topic, "partition", "offset")
);
-- A dead letter keeps at most 64 KiB of its original; size and hash describe the whole.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS original_size BIGINT;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS original_sha256 VARCHAR;

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
    r.finish_reason
FROM results AS r
JOIN baselines AS b USING (run_id, row_id);
