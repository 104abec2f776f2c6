//! One conformance suite, run against both backends. PostgreSQL tests read
//! `DIBS_TEST_POSTGRES_URL` (`.ci/run` sets it) and use a schema of their own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use dibs_core::ledger::hex;
use dibs_store::{
    Batch, IdempotentAnswer, NewEntry, PostgresStore, Row, SignedHead, SqliteStore, Store, StoreError,
    entry_hash, migrate, verify,
};

fn entry(n: u32) -> NewEntry {
    NewEntry {
        at: format!("2026-01-01T00:00:{:02}Z", n % 60),
        kind: "request_submitted".into(),
        request: Some(format!("r{n}")),
        body: format!(r#"{{"kind":"request_submitted","n":{n}}}"#),
    }
}

fn batch(range: std::ops::Range<u32>) -> Batch {
    Batch {
        entries: range.map(entry).collect(),
        answers: Vec::new(),
        requests: Vec::new(),
        ..Batch::default()
    }
}

fn answer(key: &str, response: &str) -> IdempotentAnswer {
    IdempotentAnswer {
        scope: "requester-1".into(),
        key: key.into(),
        request_digest: "d1".into(),
        status: 201,
        response: response.into(),
    }
}

/// A backend under test: a way to open a fresh store, open another handle to
/// the same one, and change a stored body behind the interface.
trait Backend {
    fn open(&self) -> Box<dyn Store>;
    fn try_open(&self) -> Result<Box<dyn Store>, StoreError>;
    fn tamper(&self, seq: u64, body: &str);
    /// Runs SQL behind the interface, as a dibs before schema versions (or an operator) would.
    fn raw(&self, sql: &str);
    /// The version the database records, read behind the interface.
    fn version(&self) -> u32;
    fn has_index(&self, name: &str) -> bool;
    /// A bytes literal in this backend's SQL.
    fn blob(&self, hex: &str) -> String;
    /// The migrations of this backend.
    fn migrations(&self) -> &'static [migrate::Migration];
}

struct Sqlite {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Sqlite {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Self { _dir: dir, path }
    }
}

impl Backend for Sqlite {
    fn open(&self) -> Box<dyn Store> {
        self.try_open().unwrap()
    }
    fn try_open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
    }
    fn raw(&self, sql: &str) {
        rusqlite::Connection::open(&self.path).unwrap().execute_batch(sql).unwrap();
    }
    fn version(&self) -> u32 {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }
    fn has_index(&self, name: &str) -> bool {
        let connection = rusqlite::Connection::open(&self.path).unwrap();
        let sql = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1";
        connection.query_row(sql, [name], |r| r.get::<_, i64>(0)).unwrap() == 1
    }
    fn migrations(&self) -> &'static [migrate::Migration] {
        migrate::SQLITE
    }
    fn blob(&self, hex: &str) -> String {
        format!("X'{hex}'")
    }
    fn tamper(&self, seq: u64, body: &str) {
        let store = SqliteStore::open(&self.path).unwrap();
        store.connection().execute("UPDATE ledger SET body = ?1 WHERE seq = ?2", (body, seq as i64)).unwrap();
    }
}

struct Postgres {
    url: String,
    schema: String,
}

impl Postgres {
    /// `None` (and a message) when no server is configured.
    fn new(test: &str) -> Option<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let Ok(url) = std::env::var("DIBS_TEST_POSTGRES_URL") else {
            eprintln!("skipping {test} on PostgreSQL: DIBS_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema =
            format!("dibs_test_{}_{}_{}", test, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
        Some(Self { url, schema })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

impl Postgres {
    fn client(&self) -> postgres::Client {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {0}; SET search_path TO {0}", self.schema))
            .unwrap();
        client
    }
}

impl Backend for Postgres {
    fn open(&self) -> Box<dyn Store> {
        self.try_open().unwrap()
    }
    fn try_open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(PostgresStore::connect(&self.url, &self.schema)?))
    }
    fn raw(&self, sql: &str) {
        self.client().batch_execute(sql).unwrap();
    }
    fn version(&self) -> u32 {
        let row =
            self.client().query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).unwrap();
        row.get::<_, i32>(0) as u32
    }
    fn has_index(&self, name: &str) -> bool {
        let sql = "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = $2";
        self.client().query_one(sql, &[&self.schema, &name]).unwrap().get::<_, i64>(0) == 1
    }
    fn migrations(&self) -> &'static [migrate::Migration] {
        migrate::POSTGRES
    }
    fn blob(&self, hex: &str) -> String {
        format!("decode('{hex}', 'hex')")
    }
    fn tamper(&self, seq: u64, body: &str) {
        let mut store = PostgresStore::connect(&self.url, &self.schema).unwrap();
        store
            .client()
            .execute("UPDATE ledger SET body = $1 WHERE seq = $2", &[&body, &(seq as i64)])
            .unwrap();
    }
}

fn appends_chain_like_the_engine(backend: &dyn Backend) {
    let mut store = backend.open();
    assert_eq!(store.head().unwrap(), (0, [0; 32]));
    let first = store.append(&batch(0..3)).unwrap();
    let second = store.append(&batch(3..5)).unwrap();
    assert_eq!(first.iter().chain(&second).map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(second[0].prev_hash, first[2].hash);

    // Every column is in the hash: the head is `entry_hash` folded over them.
    let mut head = [0u8; 32];
    for n in 0..5 {
        let e = entry(n);
        head = entry_hash(&head, u64::from(n) + 1, &e.at, &e.kind, e.request.as_deref(), &e.body);
    }
    assert_eq!(store.head().unwrap(), (5, head));

    // Paging returns what was written, in order, from any point.
    let page = store.entries(2, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(page[0].body, entry(2).body);
    assert_eq!(page[0].request.as_deref(), Some("r2"));
    assert!(store.entries(5, 10).unwrap().is_empty());

    let verified = verify(store.as_mut()).unwrap();
    assert_eq!(verified.entries, 5);
    assert_eq!(verified.head, hex(&head));
    // A cursor past every sequence number (even past i64) is the end, not the start.
    assert!(backend.open().entries(u64::MAX, 10).unwrap().is_empty());
    assert!(backend.open().entries(1 << 63, 10).unwrap().is_empty());
}

fn a_request_s_entries_are_read_without_the_rest(backend: &dyn Backend) {
    let mut store = backend.open();
    let mut entries: Vec<NewEntry> = (0..6).map(entry).collect();
    // Entries about no request (an incident, a configuration) belong to no story.
    entries[1].request = None;
    entries[4].request = Some("r0".into());
    store.append(&Batch { entries, ..Batch::default() }).unwrap();
    let seqs = |found: Vec<dibs_store::Entry>| found.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.request_entries("r0", 0, 10).unwrap()), vec![1, 5]);
    assert_eq!(seqs(store.request_entries("r0", 1, 10).unwrap()), vec![5], "after pages on");
    assert_eq!(seqs(store.request_entries("r0", 0, 1).unwrap()), vec![1], "limit bounds a page");
    assert!(store.request_entries("r9", 0, 10).unwrap().is_empty());
    let found = store.request_entries("r2", 0, 10).unwrap();
    assert_eq!(found, store.entries(2, 1).unwrap(), "the same entry, hashes and all");
}

fn a_reopened_store_keeps_everything(backend: &dyn Backend) {
    {
        let mut store = backend.open();
        store
            .append(&Batch {
                entries: vec![entry(0)],
                answers: vec![answer("k1", "{\"id\":\"r0\"}")],
                ..Batch::default()
            })
            .unwrap();
    }
    let mut store = backend.open();
    assert_eq!(store.head().unwrap().0, 2, "the entry and the answer's acknowledgement");
    let kept = store.answer("requester-1", "k1").unwrap().unwrap();
    assert_eq!(kept.response, "{\"id\":\"r0\"}");
    assert_eq!(kept.status, 201);
    assert!(store.answer("someone-else", "k1").unwrap().is_none(), "keys are scoped to the caller");
}

fn a_reused_key_commits_nothing(backend: &dyn Backend) {
    let mut store = backend.open();
    store
        .append(&Batch {
            entries: vec![entry(0)],
            answers: vec![answer("k", "first")],
            requests: Vec::new(),
            ..Batch::default()
        })
        .unwrap();
    let again = store.append(&Batch {
        entries: vec![entry(1), entry(2)],
        answers: vec![answer("k", "second")],
        ..Batch::default()
    });
    assert!(matches!(again, Err(StoreError::KeyReused { ref key }) if key == "k"), "{again:?}");
    assert_eq!(store.head().unwrap().0, 2, "the refused batch's entries were not written");
    assert_eq!(store.answer("requester-1", "k").unwrap().unwrap().response, "first");
}

fn verify_names_the_first_changed_entry(backend: &dyn Backend) {
    let mut store = backend.open();
    store.append(&batch(0..6)).unwrap();
    backend.tamper(4, r#"{"kind":"request_submitted","n":999}"#);
    let error = verify(store.as_mut()).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { seq: 4, .. }), "{error}");
    assert!(error.to_string().contains("entry 4"), "{error}");
}

/// Every column that is served or replayed is in the hash: changing any one is found.
fn verify_finds_a_change_to_any_column(backend: &dyn Backend) {
    let mut store = backend.open();
    store.append(&batch(0..6)).unwrap();
    for (seq, column, value) in [
        (2, "at", "'2027-01-01T00:00:00Z'"),
        (3, "kind", "'awarded'"),
        (4, "request", "'r-999'"),
        (5, "request", "NULL"),
    ] {
        backend.raw(&format!("UPDATE ledger SET {column} = {value} WHERE seq = {seq}"));
        let error = verify(store.as_mut()).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { seq: s, .. } if s == seq), "{column}: {error}");
        let e = entry(seq as u32 - 1);
        let request = e.request.map_or("NULL".to_owned(), |r| format!("'{r}'"));
        backend.raw(&format!(
            "UPDATE ledger SET at = '{}', kind = '{}', request = {request} WHERE seq = {seq}",
            e.at, e.kind
        ));
        assert_eq!(verify(store.as_mut()).unwrap().entries, 6, "restored");
    }
}

/// An idempotency answer is acknowledged in the chain: editing, removing or adding one is
/// found.
fn verify_finds_an_edited_removed_or_added_idempotency_answer(backend: &dyn Backend) {
    let mut store = backend.open();
    let mut first = batch(0..2);
    first.answers = vec![answer("k-1", r#"{"id":"r-1"}"#)];
    store.append(&first).unwrap();
    let verified = verify(store.as_mut()).unwrap();
    assert_eq!((verified.entries, verified.answers), (3, 1), "two entries and the acknowledgement");
    backend.raw(r#"UPDATE idempotency SET response = '{"id":"r-2"}' WHERE key = 'k-1'"#);
    let error = verify(store.as_mut()).unwrap_err().to_string();
    assert!(error.contains("k-1") && error.contains("differs"), "{error}");
    backend.raw("DELETE FROM idempotency WHERE key = 'k-1'");
    let error = verify(store.as_mut()).unwrap_err().to_string();
    assert!(error.contains("k-1") && error.contains("gone"), "{error}");
    backend.raw(r#"INSERT INTO idempotency (scope, key, request_digest, status, response) VALUES ('requester-1', 'k-1', 'd1', 201, '{"id":"r-1"}')"#);
    assert_eq!(verify(store.as_mut()).unwrap().answers, 1, "restored");
    backend.raw(r#"INSERT INTO idempotency (scope, key, request_digest, status, response) VALUES ('requester-1', 'k-9', 'd9', 201, '{"id":"r-9"}')"#);
    let error = verify(store.as_mut()).unwrap_err().to_string();
    assert!(error.contains("never acknowledged") && error.contains("k-9"), "{error}");
}

/// A signed checkpoint names an entry: a ledger cut short of it, or rewritten under it, is
/// found (the signature itself is the caller's to check).
fn verify_finds_a_cut_tail_or_a_rewrite_under_a_checkpoint(backend: &dyn Backend) {
    let mut store = backend.open();
    store.append(&batch(0..10)).unwrap();
    let (seq, hash) = store.head().unwrap();
    let head = SignedHead {
        seq,
        hash,
        at: "2026-01-01T00:00:00Z".into(),
        public_key: vec![1; 32],
        signature: vec![2; 64],
    };
    store.add_head(&head).unwrap();
    assert_eq!(verify(store.as_mut()).unwrap().checkpoints, vec![head.clone()]);
    backend.raw("DELETE FROM ledger WHERE seq > 7");
    let error = verify(store.as_mut()).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { seq: 10, .. }), "{error}");
    assert!(error.to_string().contains("cut off"), "{error}");
}

fn concurrent_writers_keep_one_chain(backend: &dyn Backend) {
    let mut handles = Vec::new();
    for writer in 0..4u32 {
        let mut store = backend.open();
        handles.push(std::thread::spawn(move || {
            for round in 0..10u32 {
                let base = writer * 1000 + round * 10;
                store.append(&batch(base..base + 3)).unwrap();
            }
        }));
    }
    for handle in handles {
        handle.join().unwrap();
    }
    let mut store = backend.open();
    let verified = verify(store.as_mut()).unwrap();
    assert_eq!(verified.entries, 4 * 10 * 3);
}

fn tokens_are_kept_by_hash_and_can_expire_and_be_revoked(backend: &dyn Backend) {
    let h1 = "a1".repeat(32);
    let h2 = "b2".repeat(32);
    let mut store = backend.open();
    assert_eq!(store.token(&h1).unwrap(), None);
    store.add_token(&h1, "provider:azure", 100, None).unwrap();
    assert!(store.add_token(&h1, "admin", 100, None).is_err(), "one hash, one role");
    store.add_token(&h2, "requester", 200, Some(300)).unwrap();
    let mut again = backend.open();
    let first = again.token(&h1).unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.role.as_str()), (&h1[..16], "provider:azure"));
    assert!(first.valid_at(1_000_000), "no expiry");
    let second = again.token(&h2).unwrap().unwrap();
    assert!(second.valid_at(299) && !second.valid_at(300), "expires at 300");
    assert_eq!(
        again.tokens().unwrap().iter().map(|t| t.role.as_str()).collect::<Vec<_>>(),
        ["requester", "provider:azure"]
    );
    // Revoked by id; the first revocation stands; a wrong id revokes nothing.
    assert!(!again.revoke_token("a1a1", 400).unwrap(), "a prefix is not an id");
    assert!(again.revoke_token(&h1[..16], 400).unwrap());
    assert!(!again.revoke_token(&h1[..16], 500).unwrap());
    let revoked = backend.open().token(&h1).unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(400));
    assert!(!revoked.valid_at(401));
}

fn the_requests_projection_is_written_with_its_batch_and_can_be_replaced(backend: &dyn Backend) {
    let mut store = backend.open();
    let rows = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    store
        .append(&Batch {
            entries: vec![entry(0)],
            answers: Vec::new(),
            requests: rows(&[("r-1", "a"), ("r-2", "b")]),
            ..Batch::default()
        })
        .unwrap();
    store
        .append(&Batch {
            entries: vec![entry(1)],
            answers: Vec::new(),
            requests: rows(&[("r-1", "c")]),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.projected_requests("", 10).unwrap(), rows(&[("r-1", "c"), ("r-2", "b")]));
    assert_eq!(store.projected_requests("r-1", 10).unwrap(), rows(&[("r-2", "b")]));
    // A refused batch writes no projection either.
    store
        .append(&Batch {
            entries: vec![],
            answers: vec![answer("k", "x")],
            requests: vec![],
            ..Batch::default()
        })
        .unwrap();
    let refused = store.append(&Batch {
        entries: vec![entry(2)],
        answers: vec![answer("k", "y")],
        requests: rows(&[("r-3", "z")]),
        ..Batch::default()
    });
    assert!(refused.is_err());
    assert_eq!(store.projected_requests("r-2", 10).unwrap(), Vec::<(String, String)>::new());
    store.replace_projection(&rows(&[("r-9", "n")])).unwrap();
    assert_eq!(backend.open().projected_requests("", 10).unwrap(), rows(&[("r-9", "n")]));
}

/// A snapshot is written in chunks, beside the ledger; it becomes the latest only when the
/// batch holding the entry that records it commits, and the chunks of any other are dropped.
fn snapshots_are_written_in_chunks_and_recorded_with_their_entry(backend: &dyn Backend) {
    use dibs_store::SnapshotPart::{Shell, State};
    let mut store = backend.open();
    store.append(&batch(0..3)).unwrap();
    assert_eq!(store.snapshot().unwrap(), None);
    // Written, not yet recorded: not the latest.
    for (n, chunk) in ["{\"a\":", "\"é\"}"].into_iter().enumerate() {
        store.put_snapshot_chunk(3, State, n as u32, chunk).unwrap();
    }
    store.put_snapshot_chunk(3, Shell, 0, "{}").unwrap();
    assert_eq!(store.snapshot().unwrap(), None);
    let recorded = Batch { entries: vec![entry(3)], snapshot_recorded: Some(3), ..Batch::default() };
    store.append(&recorded).unwrap();
    let latest = store.snapshot().unwrap().unwrap();
    assert_eq!(
        (latest.taken, latest.seq, latest.state.as_str(), latest.shell.as_str()),
        (3, 4, "{\"a\":\"é\"}", "{}")
    );
    // A later one, written and recorded, replaces it; the earlier one's chunks go.
    store.put_snapshot_chunk(5, State, 0, "{\"b\":1}").unwrap();
    store.put_snapshot_chunk(5, Shell, 0, "{}").unwrap();
    store
        .append(&Batch { entries: vec![entry(4), entry(5)], snapshot_recorded: Some(5), ..Batch::default() })
        .unwrap();
    store.drop_stale_snapshots().unwrap();
    let latest = backend.open().snapshot().unwrap().unwrap();
    assert_eq!((latest.taken, latest.seq, latest.state.as_str()), (5, 6, "{\"b\":1}"));
    store.put_snapshot_chunk(9, State, 0, "left over").unwrap();
    store.drop_stale_snapshots().unwrap();
    assert_eq!(store.snapshot().unwrap().unwrap().state, "{\"b\":1}");
    // The left-over chunk is gone: recording its snapshot now finds nothing of it.
    store.append(&Batch { entries: vec![entry(6)], snapshot_recorded: Some(9), ..Batch::default() }).unwrap();
    assert_eq!(store.snapshot().unwrap().unwrap().state, "");
}

fn row(key: &str, due: i64) -> Row {
    Row { key: key.into(), due, body: format!("{{\"key\":\"{key}\"}}") }
}

fn timers_and_calls_are_rows_committed_with_their_decisions(backend: &dyn Backend) {
    let mut store = backend.open();
    store
        .append(&Batch {
            entries: vec![entry(0)],
            timers_set: vec![row("t-2", 20), row("t-1", 10)],
            outbox_add: vec![row("c-1", 5), row("c-2", 6), row("c-3", 7)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.timers().unwrap().iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["t-1", "t-2"]);
    // A key set twice in one batch ends as the second set it, as two batches would.
    store
        .append(&Batch {
            entries: vec![entry(9)],
            timers_set: vec![row("t-9", 1), row("t-9", 2)],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.timers().unwrap().contains(&row("t-9", 2)), "{:?}", store.timers().unwrap());
    store
        .append(&Batch { entries: vec![entry(10)], timers_fired: vec!["t-9".into()], ..Batch::default() })
        .unwrap();
    store
        .append(&Batch { entries: vec![entry(1)], timers_fired: vec!["t-1".into()], ..Batch::default() })
        .unwrap();
    assert_eq!(store.timers().unwrap(), vec![row("t-2", 20)]);

    // A claim holds a call until its lease runs out; answered calls go with the answer's batch.
    let first = store.claim_calls(100, 130, 2).unwrap();
    assert_eq!(first.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["c-1", "c-2"]);
    let second = backend.open().claim_calls(100, 130, 5).unwrap();
    assert_eq!(
        second.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["c-3"],
        "claimed calls are not claimed twice"
    );
    assert!(store.claim_calls(120, 150, 5).unwrap().is_empty());
    store
        .append(&Batch { entries: vec![entry(2)], outbox_done: vec!["c-1".into()], ..Batch::default() })
        .unwrap();
    store.drop_call("c-3").unwrap();
    let expired = store.claim_calls(131, 160, 5).unwrap();
    assert_eq!(
        expired.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["c-2"],
        "a lapsed lease frees the call"
    );
    // A retry puts the call back for anyone, not before its time; a restart does not wait.
    store.retry_call("c-2", 200).unwrap();
    assert!(backend.open().claim_calls(199, 300, 5).unwrap().is_empty(), "not before 200");
    store.release_calls().unwrap();
    assert_eq!(
        backend.open().claim_calls(132, 170, 5).unwrap().len(),
        1,
        "a new leader takes over held calls"
    );
    store.retry_call("c-2", 200).unwrap();
    assert_eq!(backend.open().claim_calls(200, 300, 5).unwrap().len(), 1, "from 200 on");
}

fn concurrent_claims_never_share_a_call(backend: &dyn Backend) {
    let mut store = backend.open();
    let calls: Vec<Row> = (0..200).map(|i| row(&format!("c-{i:03}"), i)).collect();
    store.append(&Batch { entries: vec![entry(0)], outbox_add: calls, ..Batch::default() }).unwrap();
    let claimed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (mut store, claimed) = (backend.open(), claimed.clone());
            std::thread::spawn(move || {
                loop {
                    let got = store.claim_calls(1000, 2000, 3).unwrap();
                    if got.is_empty() {
                        return;
                    }
                    claimed.lock().unwrap().extend(got.into_iter().map(|r| r.key));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut keys = claimed.lock().unwrap().clone();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!((total, keys.len()), (200, 200), "every call claimed exactly once");
}

/// A database made by a dibs from before schema versions (its tables, a ledger entry and a
/// token, no version recorded) is adopted and brought up to date on open, keeping its data.
fn an_unversioned_database_is_migrated_on_open(backend: &dyn Backend) {
    let first = &backend.migrations()[0];
    backend.raw(first.sql);
    let hash = hex(&dibs_core::ledger::next_hash(&[0; 32], 0, b"{}"));
    backend.raw(&format!(
        "INSERT INTO ledger (seq, at, kind, request, body, prev_hash, hash) VALUES \
         (1, '2026-01-01T00:00:00Z', 'request_submitted', 'r1', '{{}}', {zeros}, {hash});
         INSERT INTO tokens (hash, role) VALUES ('abc', 'requester');",
        zeros = backend.blob(&hex(&[0; 32])),
        hash = backend.blob(&hash),
    ));
    assert!(!backend.has_index("ledger_by_request"));
    let mut store = backend.open();
    assert_eq!(backend.version(), migrate::latest(backend.migrations()));
    assert!(backend.has_index("ledger_by_request"));
    assert_eq!(store.token("abc").unwrap().map(|t| (t.role, t.expires_at)), Some(("requester".into(), None)));
    assert_eq!(verify(store.as_mut()).unwrap().entries, 1);
    drop(store);
    // A second open has nothing left to do.
    backend.open();
    assert_eq!(backend.version(), migrate::latest(backend.migrations()));
}

/// A database written by a newer dibs is refused with a message that says so, unchanged.
fn a_newer_schema_is_refused(backend: &dyn Backend) {
    drop(backend.open());
    let newer = migrate::latest(backend.migrations()) + 1;
    if std::ptr::eq(backend.migrations(), migrate::SQLITE) {
        backend.raw(&format!("PRAGMA user_version = {newer}"));
    } else {
        backend.raw(&format!(
            "INSERT INTO schema_migrations (version, name) VALUES ({newer}, 'from_the_future')"
        ));
    }
    let refused = backend.try_open().err().expect("a newer schema is refused").to_string();
    assert!(refused.contains(&format!("schema version {newer}")) && refused.contains("newer"), "{refused}");
    assert_eq!(backend.version(), newer);
}

/// Fencing on PostgreSQL: once a second handle takes the lead, the first cannot append.
#[test]
fn a_fenced_writer_cannot_append_after_another_takes_the_lead() {
    let Some(backend) = Postgres::new("fenced") else { return };
    let mut first = PostgresStore::connect(&backend.url, &backend.schema).unwrap();
    first.fence().unwrap();
    first.append(&batch(0..1)).unwrap();
    let mut second = PostgresStore::connect(&backend.url, &backend.schema).unwrap();
    second.fence().unwrap();
    let refused = first.append(&batch(1..2)).unwrap_err();
    assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
    second.append(&batch(1..2)).unwrap();
    assert_eq!(verify(&mut second).unwrap().entries, 2, "the refused batch left nothing");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Sqlite::new());
            })*
        }
        mod postgresql {
            $(#[test]
            fn $name() {
                if let Some(backend) = super::Postgres::new(stringify!($name)) {
                    super::$name(&backend);
                }
            })*
        }
    };
}

conformance!(
    appends_chain_like_the_engine,
    a_request_s_entries_are_read_without_the_rest,
    a_reopened_store_keeps_everything,
    a_reused_key_commits_nothing,
    verify_names_the_first_changed_entry,
    concurrent_writers_keep_one_chain,
    tokens_are_kept_by_hash_and_can_expire_and_be_revoked,
    the_requests_projection_is_written_with_its_batch_and_can_be_replaced,
    timers_and_calls_are_rows_committed_with_their_decisions,
    concurrent_claims_never_share_a_call,
    verify_finds_a_change_to_any_column,
    verify_finds_an_edited_removed_or_added_idempotency_answer,
    verify_finds_a_cut_tail_or_a_rewrite_under_a_checkpoint,
    an_unversioned_database_is_migrated_on_open,
    a_newer_schema_is_refused,
    snapshots_are_written_in_chunks_and_recorded_with_their_entry,
);
