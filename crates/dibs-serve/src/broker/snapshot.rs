//! Snapshots: a start that replays only the end of the ledger.
//!
//! Every [`SNAPSHOT_EVERY`] entries (more when the last snapshot was large), and at shutdown,
//! the broker copies its state and announces it with a `snapshot_taken` ledger entry: the
//! copy is the state as of the entry before. A worker thread serializes the copy and writes
//! it to the store a megabyte at a time (each chunk its own transaction, so the broker's
//! commits are not held up), then the broker records it with a `snapshot` entry holding the
//! SHA-256 of its two parts; from then on it is the latest.
//!
//! * `state`: what a replay of the ledger up to the announced entry reaches: the engine's
//!   state ([`dibs_core::engine::EngineSnapshot`], canonical whether or not ended requests are
//!   kept), the records of ended requests, the id counters and the configuration in force.
//!   `dibs ledger verify` computes it from its own replay at every `snapshot_taken` entry and
//!   compares it with the digest the `snapshot` entry records.
//! * `shell`: what only the running service knows: its in-process providers' reservations
//!   and random streams (a replay without those providers cannot check it; a tampered copy
//!   is still caught by its digest).
//!
//! A start loads the latest recorded snapshot whose parts match their digests and replays
//! the entries after the one it is as of. One it cannot trust is not used: the start replays
//! the whole ledger, which is what the snapshot stands for, and says why.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use dibs_core::engine::EngineSnapshot;
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::ProviderState;
use dibs_store::{Batch, NewEntry, SnapshotPart, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::{Broker, Configuration, Finished};
use crate::remote::OpenStore;

/// The entry kind that announces a snapshot (its body is a [`Taken`]).
pub(crate) const SNAPSHOT_TAKEN_KIND: &str = "snapshot_taken";
/// The entry kind that records a snapshot written (its body is a [`SnapshotRecord`]).
pub(crate) const SNAPSHOT_KIND: &str = "snapshot";

/// By default a snapshot is taken once this many entries follow the last one: a start then
/// replays about this many at most.
pub const SNAPSHOT_EVERY: u64 = 100_000;

/// About the size of a ledger entry: snapshots are spaced at least one entry per this many
/// bytes of the last one, so writing them costs about as much as the ledger.
const BYTES_PER_ENTRY: u64 = 256;

/// A snapshot is written in chunks of about this many bytes.
const CHUNK_BYTES: usize = 1 << 20;

/// The body of a `snapshot_taken` entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Taken {
    /// The last entry the state reflects (the one before this entry).
    covers: u64,
}

/// The body of a `snapshot` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SnapshotRecord {
    /// The `snapshot_taken` entry that announced it.
    pub(super) taken: u64,
    covers: u64,
    state_sha256: String,
    shell_sha256: String,
    /// The size of both parts.
    pub(super) bytes: u64,
}

/// The configuration the last start recorded (a restart with the same flags records none).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LastStart {
    None,
    /// The configuration in force.
    Current,
    Other(Configuration),
}

/// The replayable part.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    covers: u64,
    engine: EngineSnapshot,
    /// Ended requests' records, by id (shared with the broker's map: copying them is cheap).
    finished: Vec<(Arc<str>, Arc<Finished>)>,
    next_request: u64,
    next_incident: u64,
    configuration: Option<Configuration>,
    last_start: LastStart,
}

/// What only the running service knows.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shell {
    providers: BTreeMap<ProviderName, ProviderState>,
}

/// When snapshots are taken, who writes them, and what a replay met of them.
pub(super) struct Snapshots {
    /// The entry recording the last snapshot.
    pub(super) at: u64,
    /// How many entries may follow it before the next (0: never).
    pub(super) every: u64,
    /// The size of the last snapshot.
    pub(super) bytes: u64,
    /// Writes snapshots beside the broker (none: the broker writes them).
    pub(super) writer: Option<SnapshotWriter>,
    /// While replaying: the digests of the states at the snapshots announced, by entry.
    pub(super) announced: BTreeMap<u64, String>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self { at: 0, every: SNAPSHOT_EVERY, bytes: 0, writer: None, announced: BTreeMap::new() }
    }
}

/// A snapshot to write: announced at entry `taken`.
struct Job {
    taken: u64,
    state: State,
    shell: Shell,
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    dibs_core::ledger::hex(&Sha256::digest(text.as_bytes()).into())
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("a snapshot serializes")
}

/// Where serialized JSON goes: hashed as it comes, and handed to the store a chunk of about
/// `CHUNK_BYTES` at a time (cut between characters), so no copy of the whole is ever held.
struct Chunks<'a> {
    hasher: sha2::Sha256,
    buffer: Vec<u8>,
    bytes: u64,
    /// The store, the snapshot and part the chunks belong to, and the next chunk's number.
    sink: Option<(&'a mut dyn Store, u64, SnapshotPart, u32)>,
    failed: Option<StoreError>,
}

impl<'a> Chunks<'a> {
    fn new(sink: Option<(&'a mut dyn Store, u64, SnapshotPart)>) -> Self {
        use sha2::Digest;
        Self {
            hasher: sha2::Sha256::new(),
            buffer: Vec::new(),
            bytes: 0,
            sink: sink.map(|(store, taken, part)| (store, taken, part, 0)),
            failed: None,
        }
    }

    /// Hands what is buffered (up to its last whole character) to the store.
    fn put(&mut self) -> std::io::Result<()> {
        let whole = match std::str::from_utf8(&self.buffer) {
            Ok(text) => text.len(),
            Err(e) => e.valid_up_to(),
        };
        if whole == 0 {
            return Ok(());
        }
        if let Some((store, taken, part, n)) = &mut self.sink {
            let text = std::str::from_utf8(&self.buffer[..whole]).expect("cut between characters");
            if let Err(e) = store.put_snapshot_chunk(*taken, *part, *n, text) {
                self.failed = Some(e);
                return Err(std::io::Error::other("the store refused a snapshot chunk"));
            }
            *n += 1;
        }
        self.buffer.drain(..whole);
        Ok(())
    }

    /// Serializes `value` through the chunks: its SHA-256 and size.
    fn of(mut self, value: &impl Serialize) -> Result<(String, u64), StoreError> {
        use sha2::Digest;
        let written =
            serde_json::to_writer(&mut self, value).map_err(std::io::Error::from).and_then(|()| self.put());
        if let Err(e) = written {
            return Err(self
                .failed
                .take()
                .unwrap_or_else(|| StoreError::Invalid(format!("a snapshot: {e}"))));
        }
        Ok((dibs_core::ledger::hex(&self.hasher.finalize().into()), self.bytes))
    }
}

impl Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.put()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The SHA-256 of `value`'s JSON, as a snapshot would record it.
fn digest_of(value: &impl Serialize) -> String {
    Chunks::new(None).of(value).expect("hashing alone does not fail").0
}

/// Serializes a snapshot and writes its chunks; what its `snapshot` entry is to record.
fn write(job: Job, store: &mut dyn Store) -> Result<SnapshotRecord, StoreError> {
    store.drop_stale_snapshots()?;
    let (state_sha256, state_bytes) =
        Chunks::new(Some((&mut *store, job.taken, SnapshotPart::State))).of(&job.state)?;
    let (shell_sha256, shell_bytes) =
        Chunks::new(Some((store, job.taken, SnapshotPart::Shell))).of(&job.shell)?;
    Ok(SnapshotRecord {
        taken: job.taken,
        covers: job.state.covers,
        state_sha256,
        shell_sha256,
        bytes: state_bytes + shell_bytes,
    })
}

/// The thread that writes snapshots beside the broker, on its own store connection.
pub(super) struct SnapshotWriter {
    jobs: Sender<Job>,
    written: Receiver<Result<SnapshotRecord, String>>,
    /// A job sent and not yet reported.
    busy: bool,
}

impl SnapshotWriter {
    pub(super) fn start(open: OpenStore) -> std::io::Result<Self> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (report, written) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("dibs-snapshots".into()).spawn(move || {
            let mut store = None;
            for job in inbox {
                let result = match store.as_mut() {
                    Some(store) => Ok(store),
                    None => open().map(|opened| store.insert(opened)),
                }
                .and_then(|store: &mut Box<dyn Store>| write(job, store.as_mut()))
                .map_err(|e| e.to_string());
                if report.send(result).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { jobs, written, busy: false })
    }
}

impl Broker {
    /// Writes snapshots on a thread of their own, opening its store with `open`; without
    /// one, the broker writes them itself (tests, tools).
    pub fn write_snapshots_with(&mut self, open: OpenStore) -> std::io::Result<()> {
        self.snapshots.writer = Some(SnapshotWriter::start(open)?);
        Ok(())
    }

    /// The replayable state as of entry `covers`: the same from a service that forgets
    /// ended requests and from a replay that keeps them.
    fn state(&self, covers: u64) -> State {
        let mut finished: Vec<(Arc<str>, Arc<Finished>)> =
            self.finished.iter().map(|(id, f)| (id.clone(), f.clone())).collect();
        finished.extend(
            self.engine
                .requests()
                .filter(|state| state.status.is_final())
                .map(|state| (state.request.id.as_str().into(), Arc::new(Finished::of(state)))),
        );
        finished.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let last_start = match (&self.last_start, &self.configuration) {
            (None, _) => LastStart::None,
            (Some(last), Some(current)) if last == current => LastStart::Current,
            (Some(last), _) => LastStart::Other(last.clone()),
        };
        State {
            covers,
            engine: self.engine.snapshot(),
            finished,
            next_request: self.next_request,
            next_incident: self.next_incident,
            configuration: self.configuration.clone(),
            last_start,
        }
    }

    fn shell(&self) -> Shell {
        Shell { providers: self.providers.iter().map(|(n, p)| (n.clone(), p.state())).collect() }
    }

    /// The SHA-256 of the replayable state and of the shell's, as a snapshot taken now would
    /// record them: brokers in the same state give the same (whether or not they keep ended
    /// requests, for the state).
    pub fn digests(&self) -> (String, String) {
        (digest_of(&self.state(self.head)), digest_of(&self.shell()))
    }

    /// At the end of a turn: takes a snapshot when [`Broker::set_snapshot_every`] entries
    /// follow the last one (and at least one per `BYTES_PER_ENTRY` of its size), or, at
    /// shutdown (`now_anyway`), when any do. It is written on the writer thread if there is
    /// one, else here.
    pub(super) fn snapshot(&mut self, now: Timestamp, now_anyway: bool) -> Result<(), StoreError> {
        let since = self.head.saturating_sub(self.snapshots.at);
        let due = since >= self.snapshots.every.max(self.snapshots.bytes / BYTES_PER_ENTRY)
            || (now_anyway && since > 0);
        let busy = self.snapshots.writer.as_ref().is_some_and(|w| w.busy);
        if !self.engine.config().forget_finished || self.snapshots.every == 0 || !due || busy {
            return Ok(());
        }
        let covers = self.head;
        let (state, shell) = (self.state(covers), self.shell());
        let entry = NewEntry {
            at: now.to_string(),
            kind: SNAPSHOT_TAKEN_KIND.into(),
            request: None,
            body: to_json(&Taken { covers }),
        };
        let stored = self.store.append(&Batch { entries: vec![entry], ..Batch::default() })?;
        let Some(taken) = stored.last().map(|e| e.seq) else { return Ok(()) };
        self.head = taken;
        self.snapshots.at = taken;
        let job = Job { taken, state, shell };
        match &mut self.snapshots.writer {
            Some(writer) if !now_anyway => {
                writer.busy = writer.jobs.send(job).is_ok();
            }
            _ => {
                let record = write(job, self.store.as_mut())?;
                self.record_snapshot(now, record)?;
            }
        }
        Ok(())
    }

    /// A snapshot the writer has finished, if any, to record in this turn.
    pub(super) fn snapshot_written(&mut self) -> Option<SnapshotRecord> {
        let writer = self.snapshots.writer.as_mut()?;
        match writer.written.try_recv() {
            Ok(result) => {
                writer.busy = false;
                result
                    .inspect_err(|e| {
                        eprintln!("dibs: a snapshot could not be written ({e}); the next one will be")
                    })
                    .ok()
            }
            Err(_) => None,
        }
    }

    /// The `snapshot` entry that records a written snapshot.
    pub(super) fn snapshot_entry(now: Timestamp, record: &SnapshotRecord) -> NewEntry {
        NewEntry { at: now.to_string(), kind: SNAPSHOT_KIND.into(), request: None, body: to_json(record) }
    }

    /// Records a written snapshot in a batch of its own.
    fn record_snapshot(&mut self, now: Timestamp, record: SnapshotRecord) -> Result<(), StoreError> {
        let batch = Batch {
            entries: vec![Self::snapshot_entry(now, &record)],
            snapshot_recorded: Some(record.taken),
            ..Batch::default()
        };
        let stored = self.store.append(&batch)?;
        self.head = stored.last().map_or(self.head, |e| e.seq);
        self.snapshots.bytes = record.bytes;
        Ok(())
    }

    /// At shutdown: waits for the snapshot being written, and records it.
    pub(super) fn finish_snapshots(&mut self, now: Timestamp) -> Result<(), StoreError> {
        let Some(writer) = self.snapshots.writer.as_mut().filter(|w| w.busy) else { return Ok(()) };
        writer.busy = false;
        match writer.written.recv() {
            Ok(Ok(record)) => self.record_snapshot(now, record),
            Ok(Err(e)) => {
                eprintln!("dibs: a snapshot could not be written ({e})");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Whether a replay checks every snapshot against the state it reaches: a replay that
    /// keeps every request (`verify`, `rebuild`) does; a service's start trusts the ledger's
    /// digests and does not spend the time.
    fn checks_snapshots(&self) -> bool {
        !self.engine.config().forget_finished
    }

    /// A replay meets a `snapshot_taken` entry: when checking snapshots, the digest of the
    /// state it reached is kept for the `snapshot` entry that records it.
    pub(super) fn snapshot_announced(&mut self, seq: u64, body: &str) -> Result<(), StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { seq, problem };
        let taken: Taken = serde_json::from_str(body)
            .map_err(|e| corrupt(format!("an unreadable snapshot announcement: {e}")))?;
        if taken.covers + 1 != seq {
            return Err(corrupt(format!("a snapshot of entry {}, announced out of place", taken.covers)));
        }
        if self.checks_snapshots() {
            self.snapshots.announced.insert(seq, digest_of(&self.state(taken.covers)));
        }
        self.snapshots.at = seq;
        Ok(())
    }

    /// A replay meets a `snapshot` entry: when checking snapshots, the state it records must
    /// be the one the replay reached where it was announced. Returns whether it checked it.
    pub(super) fn snapshot_recorded(&mut self, seq: u64, body: &str) -> Result<bool, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { seq, problem };
        let record: SnapshotRecord =
            serde_json::from_str(body).map_err(|e| corrupt(format!("an unreadable snapshot record: {e}")))?;
        self.snapshots.bytes = record.bytes;
        if !self.checks_snapshots() {
            return Ok(false);
        }
        match self.snapshots.announced.remove(&record.taken) {
            Some(digest) if digest == record.state_sha256 => Ok(true),
            Some(_) => Err(corrupt(format!(
                "the snapshot announced at entry {} is not the state a replay of the entries before it reaches",
                record.taken
            ))),
            None => Err(corrupt(format!("a snapshot announced at entry {}, where none was", record.taken))),
        }
    }

    /// The latest recorded snapshot, if its parts match the digests its entry records.
    fn trusted_snapshot(&mut self) -> Result<Option<(dibs_store::Snapshot, SnapshotRecord)>, String> {
        let Some(snapshot) = self.store.snapshot().map_err(|e| e.to_string())? else { return Ok(None) };
        let seq = snapshot.seq;
        let entry = self.store.entries(seq.saturating_sub(1), 1).map_err(|e| e.to_string())?;
        let Some(entry) = entry.into_iter().next().filter(|e| e.seq == seq && e.kind == SNAPSHOT_KIND) else {
            return Err(format!("the stored snapshot names entry {seq}, which records no snapshot"));
        };
        let record: SnapshotRecord = serde_json::from_str(&entry.body)
            .map_err(|e| format!("entry {seq}: an unreadable snapshot record: {e}"))?;
        if record.taken != snapshot.taken
            || sha256_hex(&snapshot.state) != record.state_sha256
            || sha256_hex(&snapshot.shell) != record.shell_sha256
        {
            return Err(format!("the stored snapshot does not match the digests entry {seq} records"));
        }
        Ok(Some((snapshot, record)))
    }

    /// `dibs ledger verify`: the stored snapshot, if any, is the one its entry records (the
    /// replay has already checked that entry against the state it reached). Returns the
    /// entry that announced it.
    pub fn check_stored_snapshot(&mut self) -> Result<Option<u64>, String> {
        Ok(self.trusted_snapshot()?.map(|(snapshot, _)| snapshot.taken))
    }

    /// Loads the latest snapshot into a broker that has replayed nothing: returns the entry
    /// it is as of (replay goes on after it), none when there is none, or why it cannot be
    /// used (part of the broker may have changed: see `forget_replay`).
    pub(super) fn load_snapshot(&mut self) -> Result<Option<u64>, String> {
        let Some((snapshot, record)) = self.trusted_snapshot()? else { return Ok(None) };
        let taken = snapshot.taken;
        let unreadable =
            |e: serde_json::Error| format!("the snapshot taken at entry {taken} is unreadable: {e}");
        let state: State = serde_json::from_str(&snapshot.state).map_err(unreadable)?;
        let shell: Shell = serde_json::from_str(&snapshot.shell).map_err(unreadable)?;
        if state.covers != record.covers || record.covers + 1 != taken {
            return Err(format!("the snapshot taken at entry {taken} is of entry {}", state.covers));
        }
        if let Some(configuration) = state.configuration.clone() {
            self.configure(configuration).map_err(|e| format!("the snapshot's contracts: {e}"))?;
        }
        self.engine.restore(state.engine).map_err(|e| format!("the snapshot taken at entry {taken}: {e}"))?;
        self.last_start = match state.last_start {
            LastStart::None => None,
            LastStart::Current => state.configuration,
            LastStart::Other(last) => Some(last),
        };
        self.finished = state.finished.into_iter().collect();
        self.next_request = state.next_request;
        self.next_incident = state.next_incident;
        for (name, provider_state) in shell.providers {
            // A provider no longer run in-process (now reached over HTTP) keeps no state here.
            if let Some(provider) = self.providers.get_mut(&name) {
                provider.restore(provider_state);
            }
        }
        self.head = state.covers;
        self.snapshots.at = taken;
        self.snapshots.bytes = record.bytes;
        Ok(Some(state.covers))
    }
}

#[cfg(test)]
mod tests {
    use dibs_store::{SnapshotPart, SqliteStore};

    use super::{Chunks, sha256_hex};

    #[test]
    fn chunks_cut_between_characters_and_hash_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
        // About 3.3 MB of JSON with two- and three-byte characters.
        let value: Vec<String> = (0..300_000).map(|i| format!("é€{i}")).collect();
        let text = serde_json::to_string(&value).unwrap();
        let (digest, bytes) = Chunks::new(Some((&mut store, 7, SnapshotPart::State))).of(&value).unwrap();
        assert_eq!((digest, bytes), (sha256_hex(&text), text.len() as u64));
        let connection = store.connection();
        let mut select =
            connection.prepare("SELECT data FROM snapshot_chunks WHERE taken = 7 ORDER BY n").unwrap();
        let chunks: Vec<String> = select.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), text);
    }
}
