//! The durable ledger behind `dibs serve`.
//!
//! One interface, [`Store`], two backends: [`SqliteStore`] (a file in the
//! data folder, WAL, the embedded default) and [`PostgresStore`] (several
//! replicas sharing one database). The ledger is append-only and
//! hash-chained with [`dibs_core::ledger::next_hash`], the same step the
//! engine's in-memory chain takes, so a ledger read back from storage has
//! the head the engine computed.
//!
//! Appends come in batches ([`Batch`]): every entry of a batch, and the
//! idempotency records that acknowledge it, commit in one transaction with
//! one fsync (group commit). A batch is acknowledged only after its commit
//! returns, so a crash loses nothing that was acknowledged.
//!
//! On PostgreSQL, appends from several replicas serialize on a transaction
//! advisory lock, so sequence numbers stay gapless and every entry chains to
//! the one before, whichever replica wrote it.

pub mod migrate;
mod postgres;
mod sqlite;

pub use crate::postgres::{Leadership, PostgresStore, Waiting, lead_session_name};
pub use crate::sqlite::SqliteStore;

use dibs_core::ledger::{hex, next_hash};

/// The most entries one page returns.
pub const MAX_PAGE: usize = 1000;

/// An entry to append: the store assigns its sequence number and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// RFC 3339 instant the entry describes.
    pub at: String,
    /// The lifecycle step (`request_submitted`, `awarded`, ...).
    pub kind: String,
    pub request: Option<String>,
    /// The entry's content as JSON; this is what is hashed.
    pub body: String,
}

/// A stored ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based, gapless.
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub request: Option<String>,
    pub body: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The first answer to a create, kept under its `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentAnswer {
    /// Who may see it again: the key is scoped to the caller (its token).
    pub scope: String,
    pub key: String,
    /// A digest of the request body, so a repeat with a different body is refused.
    pub request_digest: String,
    pub status: u16,
    pub response: String,
}

/// What one transaction commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub entries: Vec<NewEntry>,
    pub answers: Vec<IdempotentAnswer>,
    /// Rows of the `requests` projection to write (id, JSON), in the same transaction.
    pub requests: Vec<(String, String)>,
    /// Timers set by this batch's decisions, and timers that fired (by key).
    pub timers_set: Vec<Row>,
    pub timers_fired: Vec<String>,
    /// Calls to providers this batch's decisions make, and calls answered (by key).
    pub outbox_add: Vec<Row>,
    pub outbox_done: Vec<String>,
    /// The snapshot announced at this entry (`snapshot_taken`), its parts all written, is
    /// recorded by this batch's last own entry (`snapshot`): it becomes the latest.
    pub snapshot_recorded: Option<u64>,
}

/// A snapshot of the service's state as of a ledger entry: what a start loads instead of
/// replaying the entries before it. `state` is what a replay of the ledger reaches
/// (checked by `dibs ledger verify`); `shell` is what only the running service knows (its
/// in-process providers), trusted through the digest its `snapshot` entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The `snapshot_taken` entry that announced it: the state is as of the entry before.
    pub taken: u64,
    /// The `snapshot` entry that records its digests.
    pub seq: u64,
    pub state: String,
    pub shell: String,
}

/// Which part of a snapshot a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPart {
    State = 0,
    Shell = 1,
}

/// A timer or an outgoing call: a key (what it is for), when it is due
/// (unix seconds), and its content as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: String,
    pub due: i64,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("idempotency key {key:?} was already used")]
    KeyReused { key: String },
    #[error("ledger entry {seq}: {problem}")]
    Corrupt { seq: u64, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error("another replica took the lead (epoch {now}, ours {ours}): this one must stop")]
    Fenced { ours: i64, now: i64 },
}

/// A durable ledger with idempotency records.
pub trait Store: Send {
    /// Makes this handle the leader's writer: bumps the leader epoch and, from now on, refuses
    /// every append once another handle has bumped it since ([`StoreError::Fenced`]). Call it
    /// holding the lead; a no-op where only one process can write (SQLite).
    fn fence(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Commits a batch in one transaction and returns the entries as stored.
    /// Fails with [`StoreError::KeyReused`], committing nothing, when an
    /// answer's (scope, key) is already recorded.
    fn append(&mut self, batch: &Batch) -> Result<Vec<Entry>, StoreError>;
    /// Up to `limit` (at most [`MAX_PAGE`]) entries with `seq > after`, in order.
    fn entries(&mut self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Up to `limit` (at most [`MAX_PAGE`]) entries about one request with `seq > after`, in
    /// order: a request's story without reading the whole ledger (an index on request, seq).
    fn request_entries(&mut self, request: &str, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// The number of entries and the last hash (zeros when empty).
    fn head(&mut self) -> Result<(u64, [u8; 32]), StoreError>;
    /// The answer recorded under (scope, key), if any.
    fn answer(&mut self, scope: &str, key: &str) -> Result<Option<IdempotentAnswer>, StoreError>;
    /// Up to `limit` rows of the `requests` projection with ids after `after`, in id order.
    fn projected_requests(&mut self, after: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError>;
    /// One request's row in the `requests` projection.
    fn request_view(&mut self, id: &str) -> Result<Option<String>, StoreError>;
    /// The latest recorded snapshot, if any, its parts put together.
    fn snapshot(&mut self) -> Result<Option<Snapshot>, StoreError>;
    /// Writes chunk `n` of a part of the snapshot announced at entry `taken`, in a
    /// transaction of its own: a snapshot is written beside the broker's commits, a
    /// megabyte at a time, not in one long transaction that would hold them up.
    fn put_snapshot_chunk(
        &mut self,
        taken: u64,
        part: SnapshotPart,
        n: u32,
        data: &str,
    ) -> Result<(), StoreError>;
    /// Deletes the chunks of every snapshot but the latest recorded, a few at a time.
    fn drop_stale_snapshots(&mut self) -> Result<(), StoreError>;
    /// Replaces the whole `requests` projection, in one transaction (`dibs ledger rebuild`).
    fn replace_projection(&mut self, rows: &[(String, String)]) -> Result<(), StoreError>;
    /// How the ledger is hashed (see [`LedgerFormat`]).
    fn ledger_format(&mut self) -> Result<LedgerFormat, StoreError>;
    /// Every idempotency answer recorded.
    fn answers(&mut self) -> Result<Vec<IdempotentAnswer>, StoreError>;
    /// Records a signed checkpoint of the head.
    fn add_head(&mut self, head: &SignedHead) -> Result<(), StoreError>;
    /// Every signed checkpoint, in sequence order.
    fn heads(&mut self) -> Result<Vec<SignedHead>, StoreError>;
    /// Every timer that has not fired, in due order.
    fn timers(&mut self) -> Result<Vec<Row>, StoreError>;
    /// Claims up to `limit` outgoing calls nobody holds (or whose holder's lease
    /// ran out) until `lease_until`: on PostgreSQL with `FOR UPDATE SKIP LOCKED`,
    /// so two workers never claim one call.
    fn claim_calls(&mut self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Row>, StoreError>;
    /// Removes a call that needs no answer recorded (it failed for good, or was a cancel).
    fn drop_call(&mut self, key: &str) -> Result<(), StoreError>;
    /// Puts a claimed call back to be tried again, by anyone, from `not_before` (unix seconds):
    /// a retry after a backoff, which a restart does not wait for.
    fn retry_call(&mut self, key: &str, not_before: i64) -> Result<(), StoreError>;
    /// Releases every claim (a new leader takes over the calls of the old).
    fn release_calls(&mut self) -> Result<(), StoreError>;
    /// Records an API token by the hex SHA-256 of its secret (the secret is never stored),
    /// made at `created_at`, good until `expires_at` (unix seconds; `None`: until revoked).
    fn add_token(
        &mut self,
        hash: &str,
        role: &str,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError>;
    /// The token with this hash, if there is one (expired and revoked ones too).
    fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token, newest first.
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes the token whose id is `id` at `at`; false when there is none (or it was
    /// revoked already: the first revocation stands).
    fn revoke_token(&mut self, id: &str, at: i64) -> Result<bool, StoreError>;
}

/// A token as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public handle: the first [`TOKEN_ID_LENGTH`] hex digits of the hash.
    pub id: String,
    pub role: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Hex digits of a token's hash that make its id.
pub const TOKEN_ID_LENGTH: usize = 16;

impl TokenRecord {
    /// Whether the token may be used at `now`.
    pub fn valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|until| now < until)
    }
}

/// What schema step 5 found when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerFormat {
    /// The first sequence number hashed over every column ([`entry_hash`]); the entries
    /// before it hash their body alone.
    pub all_columns_from: u64,
    /// Idempotency answers recorded before then, which have no acknowledgement.
    pub answers_before: u64,
}

/// A signed checkpoint of the ledger's head: entry `seq` hashed to `hash`, as the holder of
/// `public_key` (an Ed25519 key) signed at `at`. See [`head_message`] for what is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub seq: u64,
    pub hash: [u8; 32],
    pub at: String,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The bytes a head's signature covers: `dibs ledger head v1`, the sequence number, the hash.
pub fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    format!("dibs ledger head v1\n{seq}\n{}\n", hex(hash)).into_bytes()
}

/// The entry kind the store adds for each idempotency answer a batch records: the answer's
/// fields (the response by its digest) are then in the hash chain, so an edited answer is
/// found by [`verify`].
pub const ACKNOWLEDGED_KIND: &str = "acknowledged";

/// The hash of entry `seq` over every column that is served or replayed: its predecessor's
/// hash, its index, `at`, `kind`, `request` and `body`, each with its length first, so no
/// two different entries hash alike by moving bytes from one column to another.
pub fn entry_hash(
    previous: &[u8; 32],
    seq: u64,
    at: &str,
    kind: &str,
    request: Option<&str>,
    body: &str,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"dibs entry v2");
    hasher.update(previous);
    hasher.update(seq.to_be_bytes());
    for column in [Some(at), Some(kind), request, Some(body)] {
        match column {
            Some(text) => {
                hasher.update([1]);
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update([0]),
        }
    }
    hasher.finalize().into()
}

/// The hash entry `seq` must have: over every column from `all_columns_from` on, over its
/// body alone before (entries written before schema step 5).
fn hash_of(previous: &[u8; 32], seq: u64, e: &NewEntry, all_columns_from: u64) -> [u8; 32] {
    if seq >= all_columns_from {
        entry_hash(previous, seq, &e.at, &e.kind, e.request.as_deref(), &e.body)
    } else {
        next_hash(previous, seq - 1, e.body.as_bytes())
    }
}

/// The entries a batch appends: its own, then one [`ACKNOWLEDGED_KIND`] entry per answer.
/// The entry that records a batch's snapshot: the last of the batch's own entries.
pub(crate) fn snapshot_seq(batch: &Batch, appended: &[Entry]) -> Result<u64, StoreError> {
    match appended.get(batch.entries.len().wrapping_sub(1)) {
        Some(entry) => Ok(entry.seq),
        None => Err(StoreError::Invalid("a snapshot needs an entry to record it".into())),
    }
}

/// Chunks of one snapshot as read, in (part, n) order, put together.
pub(crate) fn joined_parts(taken: u64, seq: u64, chunks: impl Iterator<Item = (i64, String)>) -> Snapshot {
    let (mut state, mut shell) = (String::new(), String::new());
    for (part, data) in chunks {
        if part == SnapshotPart::State as i64 {
            state.push_str(&data);
        } else {
            shell.push_str(&data);
        }
    }
    Snapshot { taken, seq, state, shell }
}

/// How many stale chunks one transaction deletes.
pub(crate) const STALE_CHUNKS_PER_DELETE: i64 = 4;

pub(crate) fn with_acknowledgements(batch: &Batch) -> Vec<NewEntry> {
    let at = batch.entries.last().map(|e| e.at.clone()).unwrap_or_default();
    let mut entries = batch.entries.clone();
    entries.extend(batch.answers.iter().map(|a| NewEntry {
        at: at.clone(),
        kind: ACKNOWLEDGED_KIND.into(),
        request: None,
        body: acknowledgement(a),
    }));
    entries
}

fn acknowledgement(a: &IdempotentAnswer) -> String {
    use sha2::{Digest, Sha256};
    let response: [u8; 32] = Sha256::digest(a.response.as_bytes()).into();
    serde_json::json!({
        "scope": a.scope,
        "key": a.key,
        "request_digest": a.request_digest,
        "status": a.status,
        "response_sha256": hex(&response),
    })
    .to_string()
}

/// Chains a batch onto (`length`, `head`): the entries as they will be stored.
pub(crate) fn chain(length: u64, head: [u8; 32], batch: &[NewEntry], all_columns_from: u64) -> Vec<Entry> {
    let mut previous = head;
    batch
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let index = length + i as u64;
            let hash = hash_of(&previous, index + 1, e, all_columns_from);
            let entry = Entry {
                seq: index + 1,
                at: e.at.clone(),
                kind: e.kind.clone(),
                request: e.request.clone(),
                body: e.body.clone(),
                prev_hash: previous,
                hash,
            };
            previous = hash;
            entry
        })
        .collect()
}

pub(crate) fn to_hash(seq: u64, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt { seq, problem: format!("a hash of {} bytes, not 32", bytes.len()) })
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub entries: u64,
    pub head: String,
    /// Idempotency answers checked against their acknowledgements in the chain.
    pub answers: usize,
    /// Signed checkpoints checked against the chain (their signatures are checked by the
    /// caller, who holds the keys it trusts: see [`head_message`]).
    pub checkpoints: Vec<SignedHead>,
}

/// Reads the whole ledger page by page and recomputes every hash; checks every idempotency
/// answer against the acknowledgement the chain holds for it, and every signed checkpoint
/// against the entry it names. Names the first entry whose sequence number, link or hash
/// is wrong, an answer that was changed or removed, or a checkpoint the ledger no longer
/// reaches (a truncated tail) or no longer matches (a rewrite).
pub fn verify(store: &mut dyn Store) -> Result<Verification, StoreError> {
    let LedgerFormat { all_columns_from, answers_before } = store.ledger_format()?;
    let checkpoints = store.heads()?;
    let mut wanted: std::collections::BTreeMap<u64, [u8; 32]> =
        checkpoints.iter().map(|h| (h.seq, h.hash)).collect();
    let mut acknowledged: std::collections::BTreeMap<(String, String), String> = Default::default();
    let mut previous = [0u8; 32];
    let mut expected_seq = 1u64;
    loop {
        let page = store.entries(expected_seq - 1, MAX_PAGE)?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            if entry.seq != expected_seq {
                return Err(StoreError::Corrupt {
                    seq: expected_seq,
                    problem: format!("missing; the next entry is {}", entry.seq),
                });
            }
            if entry.prev_hash != previous {
                return Err(StoreError::Corrupt {
                    seq: entry.seq,
                    problem: format!(
                        "links to {} but entry {} hashes to {}",
                        hex(&entry.prev_hash),
                        entry.seq - 1,
                        hex(&previous)
                    ),
                });
            }
            let stored = NewEntry {
                at: entry.at.clone(),
                kind: entry.kind.clone(),
                request: entry.request.clone(),
                body: entry.body.clone(),
            };
            let hash = hash_of(&previous, entry.seq, &stored, all_columns_from);
            if hash != entry.hash {
                let what =
                    if entry.seq >= all_columns_from { "its at, kind, request and body" } else { "its body" };
                return Err(StoreError::Corrupt {
                    seq: entry.seq,
                    problem: format!(
                        "{what} hash to {}, not the stored {}: the entry was changed",
                        hex(&hash),
                        hex(&entry.hash)
                    ),
                });
            }
            if let Some(signed) = wanted.remove(&entry.seq)
                && signed != hash
            {
                return Err(StoreError::Corrupt {
                    seq: entry.seq,
                    problem: format!(
                        "a signed checkpoint says it hashed to {}: the ledger was rewritten",
                        hex(&signed)
                    ),
                });
            }
            if entry.kind == ACKNOWLEDGED_KIND {
                let body: serde_json::Value = serde_json::from_str(&entry.body).unwrap_or_default();
                let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
                acknowledged.insert((field("scope"), field("key")), entry.body.clone());
            }
            previous = hash;
            expected_seq += 1;
        }
    }
    let length = expected_seq - 1;
    let (stored_length, head) = store.head()?;
    if stored_length != length || (length > 0 && head != previous) {
        return Err(StoreError::Corrupt {
            seq: stored_length,
            problem: "the head does not match the entries read".into(),
        });
    }
    if let Some((seq, _)) = wanted.iter().next() {
        return Err(StoreError::Corrupt {
            seq: *seq,
            problem: format!(
                "a signed checkpoint names it, but the ledger ends at {length}: its tail was cut off"
            ),
        });
    }
    let answers = store.answers()?;
    let mut unacknowledged = Vec::new();
    for answer in &answers {
        match acknowledged.remove(&(answer.scope.clone(), answer.key.clone())) {
            Some(body) if body == acknowledgement(answer) => {}
            Some(_) => {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    problem: format!(
                        "the idempotency answer for key {:?} differs from the one the ledger acknowledged",
                        answer.key
                    ),
                });
            }
            None => unacknowledged.push(&answer.key),
        }
    }
    // Only answers from before schema step 5 may lack an acknowledgement.
    if unacknowledged.len() as u64 > answers_before {
        return Err(StoreError::Corrupt {
            seq: 0,
            problem: format!(
                "{} idempotency answers the ledger never acknowledged (at most {answers_before} predate acknowledgements), such as key {:?}",
                unacknowledged.len(),
                unacknowledged[0]
            ),
        });
    }
    if let Some(((_, key), _)) = acknowledged.iter().next() {
        return Err(StoreError::Corrupt {
            seq: 0,
            problem: format!("the idempotency answer for key {key:?} the ledger acknowledged is gone"),
        });
    }
    Ok(Verification { entries: length, head: hex(&previous), answers: answers.len(), checkpoints })
}
