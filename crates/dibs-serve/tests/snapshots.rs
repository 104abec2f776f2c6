//! A start from a snapshot reaches the state a replay of the whole ledger reaches.
//!
//! A broker runs on a clock the test moves (hours pass between turns, so holders answer,
//! quotes arrive, capacity becomes ready and is released), under random submissions,
//! cancellations, incidents and revenue, writing a snapshot every few dozen entries. At
//! each "crash" it is dropped without shutting down (what a kill -9 leaves: the committed
//! turns), then started twice from the same store: once from the latest snapshot and the
//! entries after it, once replaying everything while keeping every request (as `dibs
//! ledger verify` does). Both must be in the same state, digest for digest, providers
//! included; the one from the snapshot goes on serving. Every other run writes its
//! snapshots on the writer thread, as the service does, the others in the broker's turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dibs_core::engine::EngineConfig;
use dibs_core::types::Timestamp;
use dibs_providers::{HolderBehaviour, SimulatedBehaviour};
use dibs_serve::broker::{self, Broker, Command, SubmitBody};
use dibs_store::SqliteStore;

fn configuration() -> broker::Configuration {
    broker::Configuration::builtin_default()
}

fn providers() -> std::collections::BTreeMap<dibs_core::types::ProviderName, dibs_providers::SimulatedProvider>
{
    let behaviour = SimulatedBehaviour {
        holder: HolderBehaviour::AcceptRate(0.5),
        answer_exponential: true,
        ..SimulatedBehaviour::default()
    };
    dibs_serve::simulated_providers_with(&configuration().offers, behaviour, 11)
}

fn clock(now: &Arc<AtomicI64>) -> broker::Clock {
    let now = now.clone();
    Box::new(move || Timestamp::from_unix(now.load(Ordering::SeqCst)))
}

fn open(dir: &std::path::Path, now: &Arc<AtomicI64>, config: EngineConfig) -> (Broker, broker::Recovery) {
    let store = SqliteStore::open(&dir.join("ledger.db")).unwrap();
    Broker::recover_with(Box::new(store), providers(), None, clock(now), Some(configuration()), config)
        .unwrap()
}

/// One turn of random commands (replies are not read).
fn commands(rng: &mut fastrand::Rng, submitted: u64) -> Vec<Command> {
    fn reply<T>() -> broker::Replier<T> {
        tokio::sync::oneshot::channel().0
    }
    let mut out = Vec::new();
    for _ in 0..rng.usize(0..4) {
        let command = match rng.u32(0..20) {
            0..=11 => Command::Submit {
                body: Box::new(SubmitBody {
                    accelerators: vec![if rng.bool() { "H100" } else { "A100" }.into()],
                    gpus: 8 * rng.u32(1..9),
                    duration_hours: rng.u32(1..48),
                    workload: ["training", "inference", "batch"][rng.usize(0..3)].into(),
                    max_price: rng.bool().then(|| rng.f64() * 6.0),
                    ..SubmitBody::default()
                }),
                idempotency: None,
                reply: reply(),
            },
            12..=14 if submitted > 0 => {
                Command::Cancel { id: format!("r-{}", rng.u64(1..=submitted)), reply: reply() }
            }
            15 => Command::OpenIncident {
                provider: ["aws", "gcp", "lambda", "azure"][rng.usize(0..4)].into(),
                region: None,
                idempotency: None,
                reply: reply(),
            },
            16 => Command::ResolveIncident { id: format!("inc-{}", rng.u32(1..6)), reply: reply() },
            _ => Command::ReportRevenue { amount: rng.f64() * 1e6, reply: reply() },
        };
        out.push(command);
    }
    out
}

/// `turns` turns of random commands, up to 4 hours apart.
fn run(live: &mut Broker, rng: &mut fastrand::Rng, now: &AtomicI64, submitted: &mut u64, turns: usize) {
    for _ in 0..turns {
        now.fetch_add(rng.i64(0..4 * 3600), Ordering::SeqCst);
        let turn = commands(rng, *submitted);
        *submitted += turn.iter().filter(|c| matches!(c, Command::Submit { .. })).count() as u64;
        live.turn(turn).unwrap();
    }
}

#[test]
fn a_start_from_the_latest_snapshot_reaches_the_state_a_whole_replay_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(Timestamp::parse("2026-03-01T00:00:00Z").unwrap().unix()));
    let mut rng = fastrand::Rng::with_seed(20261202);
    let serving = EngineConfig { forget_finished: true, ..broker::engine_config() };
    let keeping = EngineConfig { forget_finished: false, ..serving };
    let data = dir.path().to_owned();
    let writer: dibs_serve::remote::OpenStore = Arc::new(move || dibs_serve::open_store(&data, None, ""));
    let (mut live, _) = open(dir.path(), &now, serving);
    live.set_snapshot_every(40);
    live.take_over().unwrap();
    let mut submitted = 0;
    let mut loaded = 0;
    for crash in 0..6 {
        run(&mut live, &mut rng, &now, &mut submitted, 60);
        let before = live.digests();
        drop(live);
        // Replaying everything, keeping every request, reaches the state the live broker had.
        let (whole, whole_recovery) = open(dir.path(), &now, keeping);
        assert_eq!(whole_recovery.snapshot, None);
        assert_eq!(whole.digests(), before, "crash {crash}: a whole replay reaches another state");
        drop(whole);
        // And so does a start from the latest snapshot.
        let (from_snapshot, recovery) = open(dir.path(), &now, serving);
        assert_eq!(recovery.snapshot_refused, None, "crash {crash}");
        if let Some(seq) = recovery.snapshot {
            // Written in the turn, a snapshot is at most 40 entries and a turn old (a turn of
            // up to 4 hours writes up to ~300 entries: submissions, awards, parts started,
            // releases, settlements); written
            // beside it, one is recorded only once written (and none is begun meanwhile).
            let written_in_turn = crash % 2 == 0;
            assert!(!written_in_turn || recovery.entries - seq <= 40 + 300, "crash {crash}: {recovery:?}");
            loaded += 1;
        }
        assert_eq!(
            from_snapshot.digests(),
            before,
            "crash {crash}: the snapshot's start reaches another state"
        );
        live = from_snapshot;
        live.set_snapshot_every(40);
        if crash % 2 == 0 {
            live.write_snapshots_with(writer.clone()).unwrap();
        }
        live.take_over().unwrap();
    }
    assert!(loaded >= 4, "only {loaded} starts loaded a snapshot");
    assert!(submitted > 300, "{submitted}");
    drop(live);
    // Every snapshot in the ledger is the state its replay reaches.
    let store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    let check = dibs_serve::replay_check(Box::new(store)).unwrap();
    assert!(check.recovery.snapshots_checked >= 10, "{:?}", check.recovery);
    check.projection.unwrap();
    assert!(check.snapshot.unwrap().is_some());
}

#[test]
fn a_snapshot_that_does_not_match_its_entry_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(Timestamp::parse("2026-03-01T00:00:00Z").unwrap().unix()));
    let mut rng = fastrand::Rng::with_seed(7);
    let serving = broker::engine_config();
    let (mut live, _) = open(dir.path(), &now, serving);
    live.set_snapshot_every(30);
    live.take_over().unwrap();
    run(&mut live, &mut rng, &now, &mut 0, 80);
    let before = live.digests();
    drop(live);
    // An operator edits the stored snapshot: one open request's GPUs.
    let store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    let connection = store.connection();
    let first = "FROM snapshot_chunks WHERE part = 0 AND n = 0 AND taken = (SELECT taken FROM snapshots)";
    let state: String = connection.query_row(&format!("SELECT data {first}"), [], |r| r.get(0)).unwrap();
    let edited = state.replacen("\"gpus\":", "\"gpus\":1", 1);
    assert_ne!(edited, state);
    let changed = connection
        .execute("UPDATE snapshot_chunks SET data = ?1 WHERE part = 0 AND n = 0 AND taken = (SELECT taken FROM snapshots)", [&edited])
        .unwrap();
    assert_eq!(changed, 1);
    drop(store);
    let (broker, recovery) = open(dir.path(), &now, serving);
    assert_eq!(recovery.snapshot, None);
    let why = recovery.snapshot_refused.unwrap();
    assert!(why.contains("does not match the digests"), "{why}");
    assert_eq!(broker.digests(), before, "the whole replay reaches the state the service had");
    drop(broker);
    let store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    let check = dibs_serve::replay_check(Box::new(store)).unwrap();
    assert!(check.snapshot.unwrap_err().contains("does not match"));
}
