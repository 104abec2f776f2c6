//! SQLite: the embedded default. One file, WAL journal, `synchronous=FULL`
//! so a committed batch survives a crash of the process or the machine.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    Batch, Entry, IdempotentAnswer, LedgerFormat, MAX_PAGE, Row, STALE_CHUNKS_PER_DELETE, SignedHead,
    Snapshot, SnapshotPart, Store, StoreError, TOKEN_ID_LENGTH, TokenRecord, chain, joined_parts, migrate,
    snapshot_seq, to_hash, with_acknowledgements,
};

pub struct SqliteStore {
    connection: Connection,
    /// Set once by schema step 5: read at open, not at every append.
    format: LedgerFormat,
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut store = Self { connection, format: LedgerFormat { all_columns_from: 1, answers_before: 0 } };
        store.migrate()?;
        store.format = read_format(&store.connection)?;
        Ok(store)
    }

    /// Brings the file's schema up to date, each step in the transaction that records it.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for step in migrate::pending(migrate::SQLITE, current)? {
            tx.execute_batch(step.sql)
                .map_err(|e| StoreError::Invalid(format!("schema migration {}: {e}", step.name)))?;
            tx.pragma_update(None, "user_version", step.version)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.connection.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// The underlying connection, for tests that need to reach past the interface.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

fn token_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let hash: String = r.get(0)?;
    Ok(TokenRecord {
        id: hash.get(..TOKEN_ID_LENGTH).unwrap_or(&hash).to_owned(),
        role: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

fn read_format(connection: &Connection) -> Result<LedgerFormat, StoreError> {
    let (all_columns_from, answers_before): (i64, i64) = connection.query_row(
        "SELECT all_columns_from, answers_before FROM ledger_format WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(LedgerFormat { all_columns_from: all_columns_from as u64, answers_before: answers_before as u64 })
}

fn read_head(connection: &Connection) -> Result<(u64, [u8; 32]), StoreError> {
    let row: Option<(i64, Vec<u8>)> = connection
        .query_row("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        None => Ok((0, [0; 32])),
        Some((seq, hash)) => Ok((seq as u64, to_hash(seq as u64, &hash)?)),
    }
}

/// A ledger row as read, before its hashes are checked to be 32 bytes.
struct RawEntry {
    seq: i64,
    at: String,
    kind: String,
    request: Option<String>,
    body: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl RawEntry {
    fn checked(self) -> Result<Entry, StoreError> {
        let seq = self.seq as u64;
        Ok(Entry {
            seq,
            at: self.at,
            kind: self.kind,
            request: self.request,
            body: self.body,
            prev_hash: to_hash(seq, &self.prev_hash)?,
            hash: to_hash(seq, &self.hash)?,
        })
    }
}

fn read_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    Ok(RawEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        request: r.get(3)?,
        body: r.get(4)?,
        prev_hash: r.get(5)?,
        hash: r.get(6)?,
    })
}

impl Store for SqliteStore {
    fn append(&mut self, batch: &Batch) -> Result<Vec<Entry>, StoreError> {
        // IMMEDIATE: take the write lock before reading the head.
        let tx = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for answer in &batch.answers {
            let inserted = tx.execute(
                "INSERT INTO idempotency (scope, key, request_digest, status, response)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![answer.scope, answer.key, answer.request_digest, answer.status, answer.response],
            )?;
            if inserted == 0 {
                return Err(StoreError::KeyReused { key: answer.key.clone() });
            }
        }
        let (length, head) = read_head(&tx)?;
        let entries = chain(length, head, &with_acknowledgements(batch), self.format.all_columns_from);
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO ledger (seq, at, kind, request, body, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in &entries {
                insert.execute(params![
                    e.seq as i64,
                    e.at,
                    e.kind,
                    e.request,
                    e.body,
                    &e.prev_hash[..],
                    &e.hash[..]
                ])?;
            }
        }
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO requests (id, view) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET view = excluded.view",
            )?;
            for (id, view) in &batch.requests {
                upsert.execute(params![id, view])?;
            }
            let mut timer = tx.prepare_cached(
                "INSERT INTO timers (key, due, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET due = excluded.due, body = excluded.body",
            )?;
            for row in &batch.timers_set {
                timer.execute(params![row.key, row.due, row.body])?;
            }
            let mut fired = tx.prepare_cached("DELETE FROM timers WHERE key = ?1")?;
            for key in &batch.timers_fired {
                fired.execute(params![key])?;
            }
            let mut call = tx.prepare_cached(
                "INSERT INTO outbox (key, due, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET due = excluded.due, body = excluded.body, claimed_until = 0",
            )?;
            for row in &batch.outbox_add {
                call.execute(params![row.key, row.due, row.body])?;
            }
            let mut done = tx.prepare_cached("DELETE FROM outbox WHERE key = ?1")?;
            for key in &batch.outbox_done {
                done.execute(params![key])?;
            }
        }
        if let Some(taken) = batch.snapshot_recorded {
            let seq = snapshot_seq(batch, &entries)? as i64;
            tx.execute("DELETE FROM snapshots", [])?;
            tx.execute("INSERT INTO snapshots (taken, seq) VALUES (?1, ?2)", params![taken as i64, seq])?;
        }
        tx.commit()?;
        Ok(entries)
    }

    fn entries(&mut self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut select = self.connection.prepare_cached(
            "SELECT seq, at, kind, request, body, prev_hash, hash FROM ledger
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = select
            .query_map(params![after.min(i64::MAX as u64) as i64, limit.min(MAX_PAGE) as i64], read_entry)?;
        rows.map(|row| row?.checked()).collect()
    }

    fn request_entries(&mut self, request: &str, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut select = self.connection.prepare_cached(
            "SELECT seq, at, kind, request, body, prev_hash, hash FROM ledger
             WHERE request = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = select.query_map(
            params![request, after.min(i64::MAX as u64) as i64, limit.min(MAX_PAGE) as i64],
            read_entry,
        )?;
        rows.map(|row| row?.checked()).collect()
    }

    fn head(&mut self) -> Result<(u64, [u8; 32]), StoreError> {
        read_head(&self.connection)
    }

    fn projected_requests(&mut self, after: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let mut select = self
            .connection
            .prepare_cached("SELECT id, view FROM requests WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows =
            select.query_map(params![after, limit.min(MAX_PAGE) as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn snapshot(&mut self) -> Result<Option<Snapshot>, StoreError> {
        let tx = self.connection.transaction()?;
        let latest: Option<(i64, i64)> = tx
            .query_row("SELECT taken, seq FROM snapshots ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((taken, seq)) = latest else { return Ok(None) };
        let mut select =
            tx.prepare("SELECT part, data FROM snapshot_chunks WHERE taken = ?1 ORDER BY part, n")?;
        let chunks = select
            .query_map(params![taken], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(joined_parts(taken as u64, seq as u64, chunks.into_iter())))
    }

    fn put_snapshot_chunk(
        &mut self,
        taken: u64,
        part: SnapshotPart,
        n: u32,
        data: &str,
    ) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO snapshot_chunks (taken, part, n, data) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (taken, part, n) DO UPDATE SET data = excluded.data",
            params![taken as i64, part as i64, n, data],
        )?;
        Ok(())
    }

    fn drop_stale_snapshots(&mut self) -> Result<(), StoreError> {
        loop {
            let deleted = self.connection.execute(
                "DELETE FROM snapshot_chunks WHERE rowid IN (SELECT rowid FROM snapshot_chunks
                 WHERE taken NOT IN (SELECT taken FROM snapshots) LIMIT ?1)",
                params![STALE_CHUNKS_PER_DELETE],
            )?;
            if deleted == 0 {
                return Ok(());
            }
        }
    }

    fn request_view(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let mut select = self.connection.prepare_cached("SELECT view FROM requests WHERE id = ?1")?;
        Ok(select.query_row(params![id], |r| r.get(0)).optional()?)
    }

    fn replace_projection(&mut self, rows: &[(String, String)]) -> Result<(), StoreError> {
        let tx = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM requests", [])?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO requests (id, view) VALUES (?1, ?2)")?;
            for (id, view) in rows {
                insert.execute(params![id, view])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn timers(&mut self) -> Result<Vec<Row>, StoreError> {
        let mut select =
            self.connection.prepare_cached("SELECT key, due, body FROM timers ORDER BY due, key")?;
        let rows = select.query_map([], |r| Ok(Row { key: r.get(0)?, due: r.get(1)?, body: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim_calls(&mut self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Row>, StoreError> {
        // One writer at a time in SQLite: the UPDATE itself is the claim.
        let mut claim = self.connection.prepare_cached(
            "UPDATE outbox SET claimed_until = ?1
             WHERE key IN (SELECT key FROM outbox WHERE claimed_until <= ?2 ORDER BY due, key LIMIT ?3)
             RETURNING key, due, body",
        )?;
        let rows = claim.query_map(params![lease_until, now, limit as i64], |r| {
            Ok(Row { key: r.get(0)?, due: r.get(1)?, body: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn drop_call(&mut self, key: &str) -> Result<(), StoreError> {
        self.connection.execute("DELETE FROM outbox WHERE key = ?1", params![key])?;
        Ok(())
    }

    fn ledger_format(&mut self) -> Result<LedgerFormat, StoreError> {
        read_format(&self.connection)
    }

    fn answers(&mut self) -> Result<Vec<IdempotentAnswer>, StoreError> {
        let mut select = self.connection.prepare(
            "SELECT scope, key, request_digest, status, response FROM idempotency ORDER BY scope, key",
        )?;
        let rows = select.query_map([], |r| {
            Ok(IdempotentAnswer {
                scope: r.get(0)?,
                key: r.get(1)?,
                request_digest: r.get(2)?,
                status: r.get(3)?,
                response: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_head(&mut self, head: &SignedHead) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO heads (seq, hash, at, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (seq) DO NOTHING",
            params![head.seq as i64, &head.hash[..], head.at, head.public_key, head.signature],
        )?;
        Ok(())
    }

    fn heads(&mut self) -> Result<Vec<SignedHead>, StoreError> {
        let mut select =
            self.connection.prepare("SELECT seq, hash, at, public_key, signature FROM heads ORDER BY seq")?;
        let rows = select.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut heads = Vec::new();
        for row in rows {
            let (seq, hash, at, public_key, signature) = row?;
            let seq = seq as u64;
            heads.push(SignedHead { seq, hash: to_hash(seq, &hash)?, at, public_key, signature });
        }
        Ok(heads)
    }

    fn retry_call(&mut self, key: &str, not_before: i64) -> Result<(), StoreError> {
        self.connection
            .execute("UPDATE outbox SET claimed_until = ?2 WHERE key = ?1", params![key, not_before])?;
        Ok(())
    }

    fn release_calls(&mut self) -> Result<(), StoreError> {
        self.connection.execute("UPDATE outbox SET claimed_until = 0", [])?;
        Ok(())
    }

    fn add_token(
        &mut self,
        hash: &str,
        role: &str,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO tokens (hash, role, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, role, created_at, expires_at],
        )?;
        Ok(())
    }

    fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT hash, role, created_at, expires_at, revoked_at FROM tokens WHERE hash = ?1",
                params![hash],
                token_record,
            )
            .optional()?)
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut select = self.connection.prepare(
            "SELECT hash, role, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at DESC, hash",
        )?;
        let rows = select.query_map([], token_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_token(&mut self, id: &str, at: i64) -> Result<bool, StoreError> {
        if id.len() != TOKEN_ID_LENGTH || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let changed = self.connection.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE substr(hash, 1, ?3) = ?1 AND revoked_at IS NULL",
            params![id, at, TOKEN_ID_LENGTH as i64],
        )?;
        Ok(changed == 1)
    }

    fn answer(&mut self, scope: &str, key: &str) -> Result<Option<IdempotentAnswer>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT request_digest, status, response FROM idempotency WHERE scope = ?1 AND key = ?2",
                params![scope, key],
                |r| {
                    Ok(IdempotentAnswer {
                        scope: scope.to_owned(),
                        key: key.to_owned(),
                        request_digest: r.get(0)?,
                        status: r.get(1)?,
                        response: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }
}
