//! PostgreSQL: for several `dibs serve` replicas sharing one database.
//! Appends serialize on a transaction-scoped advisory lock, so two replicas
//! never both read the same head and write the same sequence number.

use postgres::{Client, NoTls};

use crate::{
    Batch, Entry, IdempotentAnswer, LedgerFormat, MAX_PAGE, Row, STALE_CHUNKS_PER_DELETE, SignedHead,
    Snapshot, SnapshotPart, Store, StoreError, TOKEN_ID_LENGTH, TokenRecord, chain, joined_parts, migrate,
    snapshot_seq, to_hash, with_acknowledgements,
};

/// The advisory lock key appends take (ASCII "dibsledg").
const APPEND_LOCK: i64 = 0x6469_6273_6c65_6467;

pub struct PostgresStore {
    client: Client,
    /// The leader epoch this handle writes under, once fenced.
    epoch: Option<i64>,
    /// Set once by schema step 5: read at connect, not at every append.
    format: LedgerFormat,
    /// Statements prepared on this connection: a statement run by its text is parsed
    /// again each time, a round trip more.
    statements: std::collections::HashMap<&'static str, postgres::Statement>,
}

const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock($1)";
const EPOCH_SQL: &str = "SELECT epoch FROM leader WHERE id = 1";
const HEAD_SQL: &str = "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1";
const ANSWERS_SQL: &str = "INSERT INTO idempotency (scope, key, request_digest, status, response)
     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::INTEGER[], $5::TEXT[])
     ON CONFLICT DO NOTHING RETURNING scope, key";
const LEDGER_SQL: &str = "INSERT INTO ledger (seq, at, kind, request, body, prev_hash, hash)
     SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BYTEA[], $7::BYTEA[])";
const REQUESTS_SQL: &str = "INSERT INTO requests (id, view) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])
     ON CONFLICT (id) DO UPDATE SET view = excluded.view";
const TIMERS_SQL: &str =
    "INSERT INTO timers (key, due, body) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[])
     ON CONFLICT (key) DO UPDATE SET due = excluded.due, body = excluded.body";
const TIMERS_FIRED_SQL: &str = "DELETE FROM timers WHERE key = ANY($1)";
const OUTBOX_SQL: &str =
    "INSERT INTO outbox (key, due, body) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[])
     ON CONFLICT (key) DO UPDATE SET due = excluded.due, body = excluded.body, claimed_until = 0";
const OUTBOX_DONE_SQL: &str = "DELETE FROM outbox WHERE key = ANY($1)";

impl PostgresStore {
    /// Connects and brings the tables in `schema` up to date (see [`crate::migrate`]);
    /// the schema is created if missing (tests use one schema each so they can run side
    /// by side).
    pub fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        if schema.is_empty()
            || !schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(StoreError::Invalid(format!(
                "schema {schema:?}: use lowercase letters, digits and underscores"
            )));
        }
        let mut config: postgres::Config =
            url.parse().map_err(|e| StoreError::Invalid(format!("--database: {e}")))?;
        config.application_name(&writer_session_name(schema));
        let mut client = config.connect(NoTls)?;
        // Two replicas starting together may race to create the schema: serialize that too.
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET LOCAL search_path TO {schema};
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))?;
        let current: i32 =
            tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?.get(0);
        for step in migrate::pending(migrate::POSTGRES, current as u32)? {
            tx.batch_execute(step.sql)
                .map_err(|e| StoreError::Invalid(format!("schema migration {}: {e}", step.name)))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&(step.version as i32), &step.name],
            )?;
        }
        tx.commit()?;
        client.batch_execute(&format!("SET search_path TO {schema}"))?;
        let format = read_format(&mut client)?;
        Ok(Self { client, epoch: None, format, statements: std::collections::HashMap::new() })
    }

    /// The schema version of the dibs schema.
    pub fn schema_version(&mut self) -> Result<u32, StoreError> {
        let row = self.client.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?;
        Ok(row.get::<_, i32>(0) as u32)
    }

    /// The underlying client, for tests that need to reach past the interface.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

fn read_entry(row: &postgres::Row) -> Result<Entry, StoreError> {
    let seq = row.get::<_, i64>(0) as u64;
    Ok(Entry {
        seq,
        at: row.get(1),
        kind: row.get(2),
        request: row.get(3),
        body: row.get(4),
        prev_hash: to_hash(seq, row.get::<_, &[u8]>(5))?,
        hash: to_hash(seq, row.get::<_, &[u8]>(6))?,
    })
}

fn token_record(row: &postgres::Row) -> TokenRecord {
    let hash: String = row.get(0);
    TokenRecord {
        id: hash.get(..TOKEN_ID_LENGTH).unwrap_or(&hash).to_owned(),
        role: row.get(1),
        created_at: row.get(2),
        expires_at: row.get(3),
        revoked_at: row.get(4),
    }
}

fn read_format(client: &mut impl postgres::GenericClient) -> Result<LedgerFormat, StoreError> {
    let row =
        client.query_one("SELECT all_columns_from, answers_before FROM ledger_format WHERE id = 1", &[])?;
    Ok(LedgerFormat {
        all_columns_from: row.get::<_, i64>(0) as u64,
        answers_before: row.get::<_, i64>(1) as u64,
    })
}

fn read_head(client: &mut impl postgres::GenericClient) -> Result<(u64, [u8; 32]), StoreError> {
    let row = client.query_opt("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1", &[])?;
    match row {
        None => Ok((0, [0; 32])),
        Some(row) => {
            let seq = row.get::<_, i64>(0) as u64;
            Ok((seq, to_hash(seq, row.get::<_, &[u8]>(1))?))
        }
    }
}

impl PostgresStore {
    /// `sql`, prepared once on this connection.
    fn prepared(&mut self, sql: &'static str) -> Result<postgres::Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl Store for PostgresStore {
    fn fence(&mut self) -> Result<(), StoreError> {
        let row = self.client.query_one(
            "INSERT INTO leader (id, epoch) VALUES (1, 1)
             ON CONFLICT (id) DO UPDATE SET epoch = leader.epoch + 1 RETURNING epoch",
            &[],
        )?;
        self.epoch = Some(row.get(0));
        Ok(())
    }

    fn append(&mut self, batch: &Batch) -> Result<Vec<Entry>, StoreError> {
        let [lock, epoch, head, answers, ledger, upsert_requests, timers, timers_fired, outbox, outbox_done] =
            [
                LOCK_SQL,
                EPOCH_SQL,
                HEAD_SQL,
                ANSWERS_SQL,
                LEDGER_SQL,
                REQUESTS_SQL,
                TIMERS_SQL,
                TIMERS_FIRED_SQL,
                OUTBOX_SQL,
                OUTBOX_DONE_SQL,
            ]
            .map(|sql| self.prepared(sql));
        let mut tx = self.client.transaction()?;
        tx.execute(&lock?, &[&APPEND_LOCK])?;
        if let Some(ours) = self.epoch {
            // Appends serialize on the lock above, and a new leader bumps the epoch before
            // its first append: a deposed leader sees the bump here and writes nothing.
            let now: i64 = tx.query_one(&epoch?, &[])?.get(0);
            if now != ours {
                return Err(StoreError::Fenced { ours, now });
            }
        }
        if !batch.answers.is_empty() {
            let scopes: Vec<&str> = batch.answers.iter().map(|a| a.scope.as_str()).collect();
            let keys: Vec<&str> = batch.answers.iter().map(|a| a.key.as_str()).collect();
            let digests: Vec<&str> = batch.answers.iter().map(|a| a.request_digest.as_str()).collect();
            let statuses: Vec<i32> = batch.answers.iter().map(|a| i32::from(a.status)).collect();
            let responses: Vec<&str> = batch.answers.iter().map(|a| a.response.as_str()).collect();
            let inserted = tx.query(&answers?, &[&scopes, &keys, &digests, &statuses, &responses])?;
            if inserted.len() < batch.answers.len() {
                let new: std::collections::HashSet<(String, String)> =
                    inserted.iter().map(|r| (r.get(0), r.get(1))).collect();
                // A key already stored, or else one the batch holds twice.
                let mut seen = std::collections::HashSet::new();
                let reused = batch
                    .answers
                    .iter()
                    .find(|a| !new.contains(&(a.scope.clone(), a.key.clone())))
                    .or_else(|| batch.answers.iter().find(|a| !seen.insert((&a.scope, &a.key))))
                    .map_or_else(String::new, |a| a.key.clone());
                return Err(StoreError::KeyReused { key: reused });
            }
        }
        let (length, head) = match tx.query_opt(&head?, &[])? {
            None => (0, [0; 32]),
            Some(row) => {
                let seq = row.get::<_, i64>(0) as u64;
                (seq, to_hash(seq, row.get::<_, &[u8]>(1))?)
            }
        };
        let entries = chain(length, head, &with_acknowledgements(batch), self.format.all_columns_from);
        // One statement per table, its rows as arrays: a turn's hundreds of rows cost a
        // handful of round trips, not one each.
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq as i64).collect();
        let ats: Vec<&str> = entries.iter().map(|e| e.at.as_str()).collect();
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        let requests: Vec<Option<&str>> = entries.iter().map(|e| e.request.as_deref()).collect();
        let bodies: Vec<&str> = entries.iter().map(|e| e.body.as_str()).collect();
        let prevs: Vec<&[u8]> = entries.iter().map(|e| &e.prev_hash[..]).collect();
        let hashes: Vec<&[u8]> = entries.iter().map(|e| &e.hash[..]).collect();
        if !entries.is_empty() {
            tx.execute(&ledger?, &[&seqs, &ats, &kinds, &requests, &bodies, &prevs, &hashes])?;
        }
        if !batch.requests.is_empty() {
            let (ids, views): (Vec<&str>, Vec<&str>) =
                last_per_key(batch.requests.iter().map(|(id, view)| (id.as_str(), view.as_str())))
                    .into_iter()
                    .unzip();
            tx.execute(&upsert_requests?, &[&ids, &views])?;
        }
        if !batch.timers_set.is_empty() {
            let (keys, dues, bodies) = row_arrays(&batch.timers_set);
            tx.execute(&timers?, &[&keys, &dues, &bodies])?;
        }
        if !batch.timers_fired.is_empty() {
            tx.execute(&timers_fired?, &[&batch.timers_fired])?;
        }
        if !batch.outbox_add.is_empty() {
            let (keys, dues, bodies) = row_arrays(&batch.outbox_add);
            tx.execute(&outbox?, &[&keys, &dues, &bodies])?;
        }
        if !batch.outbox_done.is_empty() {
            tx.execute(&outbox_done?, &[&batch.outbox_done])?;
        }
        if let Some(taken) = batch.snapshot_recorded {
            let seq = snapshot_seq(batch, &entries)? as i64;
            tx.execute("DELETE FROM snapshots", &[])?;
            tx.execute("INSERT INTO snapshots (taken, seq) VALUES ($1, $2)", &[&(taken as i64), &seq])?;
        }
        tx.commit()?;
        Ok(entries)
    }

    fn entries(&mut self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let rows = self.client.query(
            "SELECT seq, at, kind, request, body, prev_hash, hash FROM ledger
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&(after.min(i64::MAX as u64) as i64), &(limit.min(MAX_PAGE) as i64)],
        )?;
        rows.iter().map(read_entry).collect()
    }

    fn request_entries(&mut self, request: &str, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let rows = self.client.query(
            "SELECT seq, at, kind, request, body, prev_hash, hash FROM ledger
             WHERE request = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&request, &(after.min(i64::MAX as u64) as i64), &(limit.min(MAX_PAGE) as i64)],
        )?;
        rows.iter().map(read_entry).collect()
    }

    fn head(&mut self) -> Result<(u64, [u8; 32]), StoreError> {
        read_head(&mut self.client)
    }

    fn projected_requests(&mut self, after: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.client.query(
            // Byte order, as SQLite and the engine order ids, whatever the database's collation.
            "SELECT id, view FROM requests WHERE id COLLATE \"C\" > $1 ORDER BY id COLLATE \"C\" LIMIT $2",
            &[&after, &(limit.min(MAX_PAGE) as i64)],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn snapshot(&mut self) -> Result<Option<Snapshot>, StoreError> {
        let mut tx = self.client.transaction()?;
        let Some(latest) = tx.query_opt("SELECT taken, seq FROM snapshots ORDER BY seq DESC LIMIT 1", &[])?
        else {
            return Ok(None);
        };
        let (taken, seq): (i64, i64) = (latest.get(0), latest.get(1));
        let rows =
            tx.query("SELECT part, data FROM snapshot_chunks WHERE taken = $1 ORDER BY part, n", &[&taken])?;
        let chunks = rows.iter().map(|r| (i64::from(r.get::<_, i32>(0)), r.get::<_, String>(1)));
        Ok(Some(joined_parts(taken as u64, seq as u64, chunks)))
    }

    fn put_snapshot_chunk(
        &mut self,
        taken: u64,
        part: SnapshotPart,
        n: u32,
        data: &str,
    ) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO snapshot_chunks (taken, part, n, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (taken, part, n) DO UPDATE SET data = excluded.data",
            &[&(taken as i64), &(part as i32), &(n as i32), &data],
        )?;
        Ok(())
    }

    fn drop_stale_snapshots(&mut self) -> Result<(), StoreError> {
        loop {
            let deleted = self.client.execute(
                "DELETE FROM snapshot_chunks WHERE (taken, part, n) IN (SELECT taken, part, n FROM snapshot_chunks
                 WHERE taken NOT IN (SELECT taken FROM snapshots) LIMIT $1)",
                &[&STALE_CHUNKS_PER_DELETE],
            )?;
            if deleted == 0 {
                return Ok(());
            }
        }
    }

    fn request_view(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let select = self.prepared("SELECT view FROM requests WHERE id = $1")?;
        Ok(self.client.query_opt(&select, &[&id])?.map(|r| r.get(0)))
    }

    fn replace_projection(&mut self, rows: &[(String, String)]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])?;
        tx.execute("DELETE FROM requests", &[])?;
        let insert = tx.prepare("INSERT INTO requests (id, view) VALUES ($1, $2)")?;
        for (id, view) in rows {
            tx.execute(&insert, &[id, view])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn timers(&mut self) -> Result<Vec<Row>, StoreError> {
        let rows =
            self.client.query("SELECT key, due, body FROM timers ORDER BY due, key COLLATE \"C\"", &[])?;
        Ok(rows.iter().map(|r| Row { key: r.get(0), due: r.get(1), body: r.get(2) }).collect())
    }

    fn claim_calls(&mut self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Row>, StoreError> {
        // SKIP LOCKED: a row another worker is claiming right now is passed over, not waited for.
        let rows = self.client.query(
            "UPDATE outbox SET claimed_until = $1
             WHERE key IN (SELECT key FROM outbox WHERE claimed_until <= $2
                           ORDER BY due, key LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING key, due, body",
            &[&lease_until, &now, &(limit as i64)],
        )?;
        Ok(rows.iter().map(|r| Row { key: r.get(0), due: r.get(1), body: r.get(2) }).collect())
    }

    fn drop_call(&mut self, key: &str) -> Result<(), StoreError> {
        self.client.execute("DELETE FROM outbox WHERE key = $1", &[&key])?;
        Ok(())
    }

    fn ledger_format(&mut self) -> Result<LedgerFormat, StoreError> {
        read_format(&mut self.client)
    }

    fn answers(&mut self) -> Result<Vec<IdempotentAnswer>, StoreError> {
        let rows = self.client.query(
            "SELECT scope, key, request_digest, status, response FROM idempotency ORDER BY scope, key",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| IdempotentAnswer {
                scope: r.get(0),
                key: r.get(1),
                request_digest: r.get(2),
                status: r.get::<_, i32>(3) as u16,
                response: r.get(4),
            })
            .collect())
    }

    fn add_head(&mut self, head: &SignedHead) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO heads (seq, hash, at, public_key, signature) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (seq) DO NOTHING",
            &[&(head.seq as i64), &&head.hash[..], &head.at, &head.public_key, &head.signature],
        )?;
        Ok(())
    }

    fn heads(&mut self) -> Result<Vec<SignedHead>, StoreError> {
        let rows =
            self.client.query("SELECT seq, hash, at, public_key, signature FROM heads ORDER BY seq", &[])?;
        rows.iter()
            .map(|r| {
                let seq = r.get::<_, i64>(0) as u64;
                Ok(SignedHead {
                    seq,
                    hash: to_hash(seq, r.get::<_, &[u8]>(1))?,
                    at: r.get(2),
                    public_key: r.get(3),
                    signature: r.get(4),
                })
            })
            .collect()
    }

    fn retry_call(&mut self, key: &str, not_before: i64) -> Result<(), StoreError> {
        self.client.execute("UPDATE outbox SET claimed_until = $2 WHERE key = $1", &[&key, &not_before])?;
        Ok(())
    }

    fn release_calls(&mut self) -> Result<(), StoreError> {
        self.client.execute("UPDATE outbox SET claimed_until = 0", &[])?;
        Ok(())
    }

    fn add_token(
        &mut self,
        hash: &str,
        role: &str,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO tokens (hash, role, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            &[&hash, &role, &created_at, &expires_at],
        )?;
        Ok(())
    }

    fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = self.client.query_opt(
            "SELECT hash, role, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1",
            &[&hash],
        )?;
        Ok(row.as_ref().map(token_record))
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.client.query(
            "SELECT hash, role, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at DESC, hash",
            &[],
        )?;
        Ok(rows.iter().map(token_record).collect())
    }

    fn revoke_token(&mut self, id: &str, at: i64) -> Result<bool, StoreError> {
        if id.len() != TOKEN_ID_LENGTH || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let changed = self.client.execute(
            "UPDATE tokens SET revoked_at = $2 WHERE left(hash, $3) = $1 AND revoked_at IS NULL",
            &[&id, &at, &(TOKEN_ID_LENGTH as i32)],
        )?;
        Ok(changed == 1)
    }

    fn answer(&mut self, scope: &str, key: &str) -> Result<Option<IdempotentAnswer>, StoreError> {
        let row = self.client.query_opt(
            "SELECT request_digest, status, response FROM idempotency WHERE scope = $1 AND key = $2",
            &[&scope, &key],
        )?;
        Ok(row.map(|row| IdempotentAnswer {
            scope: scope.to_owned(),
            key: key.to_owned(),
            request_digest: row.get(0),
            status: row.get::<_, i32>(1) as u16,
            response: row.get(2),
        }))
    }
}

/// The right to run the engine on a shared database: a session-level
/// advisory lock, held for as long as this value (and its connection)
/// lives. When the holder dies, PostgreSQL drops its session and the lock,
/// and a waiting replica takes over.
pub struct Leadership {
    _watch: std::thread::JoinHandle<()>,
}

/// How often a leader checks that its lock's session is alive.
const LEAD_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// The `application_name` of a replica's store sessions (its writer and readers): what a
/// standby ends, with the lock session, when the leader's lease is stale.
pub fn writer_session_name(schema: &str) -> String {
    format!("dibs-store-{schema}")
}

/// How often the leader renews its lease.
const LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The `application_name` of a replica's lock session (for operators, and the tests that
/// terminate it).
pub fn lead_session_name(schema: &str) -> String {
    format!("dibs-lead-{schema}")
}

/// The advisory lock key for leading `schema`'s ledger.
fn leader_key(schema: &str) -> i64 {
    let hash = schema
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash >> 1) as i64
}

impl PostgresStore {
    /// Whether a replica leads `schema` now: another session holds its advisory lock.
    pub fn led(url: &str, schema: &str) -> Result<bool, StoreError> {
        let mut client = postgres::Client::connect(url, NoTls)?;
        let key = leader_key(schema);
        let row = client.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
             AND d.datname = current_database() AND ((l.classid::bigint << 32) | l.objid::bigint) = $1)",
            &[&key],
        )?;
        Ok(row.get::<_, bool>(0))
    }

    /// Blocks until this process leads `schema`; calls `waiting` with why whenever that
    /// changes (another replica leads; the database cannot be reached: it keeps trying,
    /// with a growing backoff up to [`RECONNECT_MOST`], so a replica started before its
    /// database, or left by a database restart, waits rather than exits). Once it leads, a
    /// thread watches the lock's session and calls `lost` the moment it is gone (the session
    /// was terminated, the connection dropped): the lock went with it, and another replica
    /// may already lead. `lost` must stop this process's writing at once.
    ///
    /// The lead has a lease of `lease`: the leader renews it about once a second on its lock
    /// session. A leader frozen (stopped, swapped out, partitioned) keeps its lock but not
    /// its lease: a standby that finds the lease stale past `lease` twice, a second apart,
    /// ends the old leader's sessions (its lock and any append it was in the middle of go
    /// with them) and takes the lock; the epoch it bumps refuses whatever the old leader
    /// still tries to write when it resumes.
    pub fn lead(
        url: &str,
        schema: &str,
        lease: std::time::Duration,
        mut waiting: impl FnMut(Waiting),
        lost: impl FnOnce(StoreError) + Send + 'static,
    ) -> Result<Leadership, StoreError> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| StoreError::Invalid(format!("--database: {e}")))?;
        config.application_name(&lead_session_name(schema));
        let key = leader_key(schema);
        let mut last: Option<Waiting> = None;
        let mut tell = |now: Waiting| {
            if last.as_ref() != Some(&now) {
                waiting(now.clone());
                last = Some(now);
            }
        };
        let mut backoff = RECONNECT_FIRST;
        let renew = format!("UPDATE {schema}.leader SET renewed_at = now() WHERE id = 1");
        let mut stale_since: Option<std::time::Instant> = None;
        let mut client = loop {
            match config.connect(NoTls) {
                Ok(client) => break client,
                Err(e) => {
                    tell(Waiting::DatabaseDown(e.to_string()));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RECONNECT_MOST);
                }
            }
        };
        loop {
            let row = match client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]) {
                Ok(row) => row,
                Err(e) => {
                    // The connection broke (a database restart): connect again and keep waiting.
                    tell(Waiting::DatabaseDown(e.to_string()));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RECONNECT_MOST);
                    if let Ok(again) = config.connect(NoTls) {
                        client = again;
                    }
                    continue;
                }
            };
            backoff = RECONNECT_FIRST;
            if row.get::<_, bool>(0) {
                // The lease is ours from now (no table yet on a first start: nothing to renew).
                let _ = client.simple_query(&renew);
                let watch = std::thread::Builder::new()
                    .name("dibs-lead-watch".into())
                    .spawn(move || {
                        let mut renewed = std::time::Instant::now();
                        loop {
                            std::thread::sleep(LEAD_CHECK);
                            let check = if renewed.elapsed() >= LEASE_RENEW_EVERY {
                                renewed = std::time::Instant::now();
                                client.simple_query(&renew).or_else(|e| {
                                    // The lease's table comes with the first migration run.
                                    if e.code().is_some() { client.simple_query("SELECT 1") } else { Err(e) }
                                })
                            } else {
                                client.simple_query("SELECT 1")
                            };
                            if let Err(e) = check {
                                lost(e.into());
                                return;
                            }
                        }
                    })
                    .map_err(|e| StoreError::Invalid(format!("a thread to watch the lead: {e}")))?;
                return Ok(Leadership { _watch: watch });
            }
            // Another session holds the lock: is its lease still renewed?
            let age = client
                .query_opt(&format!("SELECT EXTRACT(EPOCH FROM now() - renewed_at)::FLOAT8 FROM {schema}.leader WHERE id = 1"), &[])
                .ok()
                .flatten()
                .map(|row| row.get::<_, f64>(0));
            if age.is_some_and(|age| age > lease.as_secs_f64()) {
                let since = *stale_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= std::time::Duration::from_secs(1) {
                    eprintln!(
                        "dibs: the leader of schema {schema:?} has not renewed its lease for {:.1} s (more than {:?}): ending its sessions",
                        age.unwrap_or_default(),
                        lease
                    );
                    let _ = client.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = ANY($1) AND pid <> pg_backend_pid()",
                        &[&vec![lead_session_name(schema), writer_session_name(schema)]],
                    );
                    stale_since = None;
                    continue;
                }
            } else {
                stale_since = None;
            }
            tell(Waiting::AnotherLeads);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// Why a replica is not leading yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Another replica holds the lead.
    AnotherLeads,
    /// The database cannot be reached (what the driver said); trying again.
    DatabaseDown(String),
}

/// The first wait before a standby tries the database again, doubling up to
/// [`RECONNECT_MOST`].
pub const RECONNECT_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
pub const RECONNECT_MOST: std::time::Duration = std::time::Duration::from_secs(5);

/// The last value given for each key, in the order keys first appear: what one row
/// upserted after another leaves, as one statement may not touch a row twice.
fn last_per_key<'a, V>(pairs: impl Iterator<Item = (&'a str, V)>) -> Vec<(&'a str, V)> {
    let mut out: Vec<(&'a str, V)> = Vec::new();
    let mut at: std::collections::HashMap<&'a str, usize> = std::collections::HashMap::new();
    for (key, value) in pairs {
        match at.get(key) {
            Some(&i) => out[i].1 = value,
            None => {
                at.insert(key, out.len());
                out.push((key, value));
            }
        }
    }
    out
}

/// Timer or outbox rows as the three arrays an UNNEST insert takes, one row per key.
fn row_arrays(rows: &[crate::Row]) -> (Vec<&str>, Vec<i64>, Vec<&str>) {
    let mut keys = Vec::new();
    let mut dues = Vec::new();
    let mut bodies = Vec::new();
    for (key, row) in last_per_key(rows.iter().map(|r| (r.key.as_str(), r))) {
        keys.push(key);
        dues.push(row.due);
        bodies.push(row.body.as_str());
    }
    (keys, dues, bodies)
}
