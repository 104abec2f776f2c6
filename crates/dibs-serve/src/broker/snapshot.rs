//! Snapshots: a start bounded regardless of the ledger's length.
//!
//! Every [`SNAPSHOT_EVERY`] entries, and at shutdown, the broker writes its state down: a
//! ledger entry of kind `snapshot` records the entry it covers and the SHA-256 of two parts,
//! and the parts themselves go to the store's `snapshots` table (the latest only), in the same
//! transaction:
//!
//! * `state`: what a replay of the ledger up to the covered entry reaches: the engine's
//!   state ([`dibs_core::engine::EngineSnapshot`], canonical whether or not ended requests are
//!   kept), the records of ended requests, the id counters and the configuration in force.
//!   A replay checks it: whenever it meets a snapshot entry it computes the same JSON from
//!   its own state and compares digests, so `dibs ledger verify` proves every snapshot.
//! * `shell`: what only the running service knows: its in-process providers' reservations
//!   and random streams (a replay without those providers cannot check it; a tampered copy
//!   is still caught by the digest its entry records).
//!
//! A start loads the latest snapshot whose parts match their entry's digests and replays only
//! the entries after it. One it cannot trust is not used: the start replays the whole ledger,
//! which is what the snapshot stands for, and says why.

use std::borrow::Cow;
use std::collections::BTreeMap;

use dibs_core::engine::{EngineSnapshot, EngineSnapshotRef};
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::ProviderState;
use dibs_store::{Batch, NewEntry, Snapshot, StoreError};
use serde::{Deserialize, Serialize};

use super::{Broker, Configuration, Finished};

/// The entry kind that records a snapshot (its body is a [`SnapshotRecord`]).
pub(crate) const SNAPSHOT_KIND: &str = "snapshot";

/// By default a snapshot is written once this many entries follow the last one: a start
/// then replays at most this many (about 0.2 s here).
pub const SNAPSHOT_EVERY: u64 = 100_000;

/// The body of a snapshot entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRecord {
    /// The last entry the snapshot's state reflects (the one before this entry).
    covers: u64,
    state_sha256: String,
    shell_sha256: String,
    /// The size of both parts.
    bytes: u64,
}

/// The configuration the last start recorded (a restart with the same flags records none).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LastStart<C> {
    None,
    /// The configuration in force.
    Current,
    Other(C),
}

/// The replayable part, borrowed to write.
#[derive(Serialize)]
struct StateRef<'a> {
    covers: u64,
    engine: EngineSnapshotRef<'a>,
    finished: Vec<(&'a str, Cow<'a, Finished>)>,
    next_request: u64,
    next_incident: u64,
    configuration: Option<&'a Configuration>,
    last_start: LastStart<&'a Configuration>,
}

/// The replayable part as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    covers: u64,
    engine: EngineSnapshot,
    finished: Vec<(String, Finished)>,
    next_request: u64,
    next_incident: u64,
    configuration: Option<Configuration>,
    last_start: LastStart<Configuration>,
}

/// What only the running service knows.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shell {
    providers: BTreeMap<ProviderName, ProviderState>,
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    dibs_core::ledger::hex(&Sha256::digest(text.as_bytes()).into())
}

impl Broker {
    /// The replayable state as of entry `covers`, as the JSON a snapshot holds: the same
    /// bytes from a service that forgets ended requests and from a replay that keeps them.
    fn state_json(&self, covers: u64) -> String {
        let mut finished: Vec<(&str, Cow<'_, Finished>)> =
            self.finished.iter().map(|(id, f)| (id.as_str(), Cow::Borrowed(f))).collect();
        finished.extend(
            self.engine
                .requests()
                .filter(|state| state.status.is_final())
                .map(|state| (state.request.id.as_str(), Cow::Owned(Finished::of(state)))),
        );
        finished.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let last_start = match (&self.last_start, &self.configuration) {
            (None, _) => LastStart::None,
            (Some(last), Some(current)) if last == current => LastStart::Current,
            (Some(last), _) => LastStart::Other(last),
        };
        let state = StateRef {
            covers,
            engine: self.engine.snapshot(),
            finished,
            next_request: self.next_request,
            next_incident: self.next_incident,
            configuration: self.configuration.as_ref(),
            last_start,
        };
        serde_json::to_string(&state).expect("a snapshot serializes")
    }

    fn shell_json(&self) -> String {
        let shell = Shell { providers: self.providers.iter().map(|(n, p)| (n.clone(), p.state())).collect() };
        serde_json::to_string(&shell).expect("a snapshot serializes")
    }

    /// The SHA-256 of the replayable state and of the shell's, as a snapshot taken now would
    /// record them: brokers in the same state give the same (whether or not they keep ended
    /// requests, for the state).
    pub fn digests(&self) -> (String, String) {
        (sha256_hex(&self.state_json(self.head)), sha256_hex(&self.shell_json()))
    }

    /// Writes a snapshot when [`Broker::set_snapshot_every`] entries follow the last one, or
    /// (`now_anyway`, at shutdown) when any do.
    pub(super) fn snapshot(&mut self, now: Timestamp, now_anyway: bool) -> Result<(), StoreError> {
        let since = self.head.saturating_sub(self.snapshot_at);
        let due = since >= self.snapshot_every || (now_anyway && since > 0);
        if !self.engine.config().forget_finished || self.snapshot_every == 0 || !due {
            return Ok(());
        }
        let state = self.state_json(self.head);
        let shell = self.shell_json();
        let record = SnapshotRecord {
            covers: self.head,
            state_sha256: sha256_hex(&state),
            shell_sha256: sha256_hex(&shell),
            bytes: (state.len() + shell.len()) as u64,
        };
        let entry = NewEntry {
            at: now.to_string(),
            kind: SNAPSHOT_KIND.into(),
            request: None,
            body: serde_json::to_string(&record).expect("a snapshot record serializes"),
        };
        let snapshot = Snapshot { seq: 0, state, shell };
        let stored = self.store.append(&Batch {
            entries: vec![entry],
            snapshot: Some(snapshot),
            ..Batch::default()
        })?;
        if let Some(last) = stored.last() {
            self.head = last.seq;
            self.snapshot_at = last.seq;
        }
        Ok(())
    }

    /// A replay meets the snapshot entry `seq`: the state it reached must be the one the
    /// snapshot recorded.
    pub(super) fn check_snapshot_entry(&mut self, seq: u64, body: &str) -> Result<(), StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { seq, problem };
        let record: SnapshotRecord =
            serde_json::from_str(body).map_err(|e| corrupt(format!("an unreadable snapshot record: {e}")))?;
        if record.covers + 1 != seq {
            return Err(corrupt(format!("a snapshot of entry {}, recorded out of place", record.covers)));
        }
        if sha256_hex(&self.state_json(record.covers)) != record.state_sha256 {
            return Err(corrupt(
                "the snapshot it records is not the state a replay of the entries before it reaches".into(),
            ));
        }
        self.snapshot_at = seq;
        Ok(())
    }

    /// Checks the stored snapshot's parts against the digests its entry records; returns the
    /// record and the parts when they match.
    fn trusted_snapshot(&mut self) -> Result<Option<(Snapshot, SnapshotRecord)>, String> {
        let Some(snapshot) = self.store.snapshot().map_err(|e| e.to_string())? else { return Ok(None) };
        let seq = snapshot.seq;
        let entry = self.store.entries(seq.saturating_sub(1), 1).map_err(|e| e.to_string())?;
        let Some(entry) = entry.into_iter().next().filter(|e| e.seq == seq && e.kind == SNAPSHOT_KIND) else {
            return Err(format!("the stored snapshot names entry {seq}, which records no snapshot"));
        };
        let record: SnapshotRecord = serde_json::from_str(&entry.body)
            .map_err(|e| format!("entry {seq}: an unreadable snapshot record: {e}"))?;
        if sha256_hex(&snapshot.state) != record.state_sha256
            || sha256_hex(&snapshot.shell) != record.shell_sha256
        {
            return Err(format!("the stored snapshot does not match the digests entry {seq} records"));
        }
        Ok(Some((snapshot, record)))
    }

    /// `dibs ledger verify`: the stored snapshot, if any, is the one its entry records (the
    /// replay has already checked that entry against the state it reached).
    pub fn check_stored_snapshot(&mut self) -> Result<Option<u64>, String> {
        Ok(self.trusted_snapshot()?.map(|(snapshot, _)| snapshot.seq))
    }

    /// Loads the latest snapshot into a broker that has replayed nothing: returns the entry
    /// that records it (replay goes on after it), none when there is none, or why it cannot
    /// be used (the broker is then as it was).
    pub(super) fn load_snapshot(&mut self) -> Result<Option<u64>, String> {
        let Some((snapshot, record)) = self.trusted_snapshot()? else { return Ok(None) };
        let seq = snapshot.seq;
        let unreadable = |e: serde_json::Error| format!("the snapshot at entry {seq} is unreadable: {e}");
        let state: State = serde_json::from_str(&snapshot.state).map_err(unreadable)?;
        let shell: Shell = serde_json::from_str(&snapshot.shell).map_err(unreadable)?;
        if state.covers != record.covers {
            return Err(format!(
                "the snapshot at entry {seq} covers entry {}, its record says {}",
                state.covers, record.covers
            ));
        }
        if let Some(configuration) = state.configuration.clone() {
            self.configure(configuration).map_err(|e| format!("the snapshot's contracts: {e}"))?;
        }
        self.engine.restore(state.engine).map_err(|e| format!("the snapshot at entry {seq}: {e}"))?;
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
        self.head = seq;
        self.snapshot_at = seq;
        Ok(Some(seq))
    }
}
