-- The catalog of mpmirror. Times are INTEGER Unix seconds; update_time exactly as the
-- API sent it. Never edit this file once released: add 0002_*.sql instead.

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    status      TEXT NOT NULL
                CHECK (status IN ('running', 'ok', 'partial', 'aborted', 'interrupted')),
    pid         INTEGER,
    listed      INTEGER NOT NULL DEFAULT 0,
    new         INTEGER NOT NULL DEFAULT 0,
    changed     INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    fetched     INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0,
    api_calls   INTEGER NOT NULL DEFAULT 0,
    message     TEXT
);

CREATE TABLE assets (
    account            TEXT NOT NULL,
    type               TEXT NOT NULL CHECK (type IN ('image', 'video', 'voice', 'news')),
    media_id           TEXT NOT NULL,
    name               TEXT NOT NULL DEFAULT '',
    update_time        INTEGER NOT NULL,
    sha256             TEXT,
    size               INTEGER,
    deleted_at         INTEGER,
    -- pending: listed, content not stored yet; stored: content of stored_update_time
    -- is in blobs/; failed: the last fetch failed (see error), retried next run;
    -- unavailable: upstream offers no file (a video whose down_url is a web page).
    state              TEXT NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'stored', 'failed', 'unavailable')),
    stored_update_time INTEGER,
    first_seen_at      INTEGER NOT NULL,
    last_seen_at       INTEGER NOT NULL,
    filename           TEXT,
    error              TEXT,
    failed_at          INTEGER,
    failures           INTEGER NOT NULL DEFAULT 0,
    upstream_url       TEXT,
    title              TEXT,
    description        TEXT,
    PRIMARY KEY (account, media_id)
);
CREATE INDEX assets_by_type ON assets (account, type);

CREATE TABLE asset_versions (
    account     TEXT NOT NULL,
    media_id    TEXT NOT NULL,
    update_time INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    stored_at   INTEGER NOT NULL,
    run_id      INTEGER REFERENCES runs (id),
    PRIMARY KEY (account, media_id, update_time),
    FOREIGN KEY (account, media_id) REFERENCES assets (account, media_id)
);
CREATE INDEX asset_versions_by_time ON asset_versions (stored_at);

CREATE TABLE articles (
    account            TEXT NOT NULL,
    media_id           TEXT NOT NULL,
    idx                INTEGER NOT NULL,
    title              TEXT NOT NULL DEFAULT '',
    author             TEXT NOT NULL DEFAULT '',
    digest             TEXT NOT NULL DEFAULT '',
    content_sha256     TEXT NOT NULL,
    thumb_media_id     TEXT NOT NULL DEFAULT '',
    url                TEXT NOT NULL DEFAULT '',
    content_source_url TEXT NOT NULL DEFAULT '',
    thumb_url          TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (account, media_id, idx),
    FOREIGN KEY (account, media_id) REFERENCES assets (account, media_id)
);

-- Images embedded in article HTML (data-src) and covers (thumb_url): not in the
-- material list, harvested so that an article comes back whole.
CREATE TABLE article_images (
    account   TEXT NOT NULL,
    url       TEXT NOT NULL,
    media_id  TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    sha256    TEXT,
    size      INTEGER,
    error     TEXT,
    PRIMARY KEY (account, url)
);

-- API calls this tool made, per Beijing calendar day, for daily budgets across runs.
CREATE TABLE api_usage (
    account  TEXT NOT NULL,
    day      TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    calls    INTEGER NOT NULL,
    PRIMARY KEY (account, day, endpoint)
);
