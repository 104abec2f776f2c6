//! Timers whose moment has passed leave the queue and the store: a request decided early
//! does not keep its holder window (72 hours) and quote deadline queued until they fire.

use dibs_core::contract;
use dibs_providers::{HolderBehaviour, SimulatedBehaviour};
use dibs_serve::broker::{self, Broker, Command, SubmitBody};
use dibs_store::{SqliteStore, Store};

fn body() -> SubmitBody {
    SubmitBody {
        accelerators: vec!["H100".into()],
        gpus: 8,
        duration_hours: 24,
        workload: "training".into(),
        // Below every offer: each request ends unfilled as soon as it is decided.
        max_price: Some(0.01),
        ..SubmitBody::default()
    }
}

fn ask<T: serde::Serialize>(
    tx: &std::sync::mpsc::Sender<Command>,
    command: impl FnOnce(broker::Replier<T>) -> Command,
) -> serde_json::Value {
    let (reply, wait) = tokio::sync::oneshot::channel();
    tx.send(command(reply)).unwrap();
    serde_json::to_value(wait.blocking_recv().unwrap().unwrap()).unwrap()
}

#[test]
fn timers_of_requests_decided_early_are_dropped_with_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let offers = dibs_core::catalog::bundled_catalog().offers;
    // Holders and markets answer at once: every holder window and quote deadline is moot
    // as soon as it is set.
    let behaviour = SimulatedBehaviour {
        holder: HolderBehaviour::Decline,
        answer_hours: 0.0,
        quote_hours: 0.0,
        ..SimulatedBehaviour::default()
    };
    let providers = dibs_serve::simulated_providers_with(&offers, behaviour, 7);
    let store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    let configuration =
        broker::Configuration::at_start(contract::builtin_contract_texts("default").unwrap(), offers);
    let (mut broker, _) =
        Broker::recover(Box::new(store), providers, None, broker::wall_clock(), Some(configuration)).unwrap();
    broker.take_over().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || broker.run(rx).unwrap());
    let n = 4_000;
    for _ in 0..n {
        let answer = ask(&tx, |reply| Command::Submit { body: Box::new(body()), idempotency: None, reply });
        assert!(answer["id"].is_string(), "{answer}");
    }
    let stats = ask(&tx, |reply| Command::Stats { reply });
    let pending = stats["pending_inputs"].as_u64().unwrap();
    assert_eq!(stats["requests"]["unfilled"], n, "{stats}");
    // Two timers per request would be 8,000: the queue is looked through at 1,024 and
    // whenever it has doubled since, and nothing here stays live but the settlement tick.
    assert!(pending <= 1_024, "{pending} inputs pending for {n} requests: {stats}");
    tx.send(Command::Shutdown).unwrap();
    thread.join().unwrap();

    // The store holds only the timers still pending: a restart re-arms no moot ones.
    let mut store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    let rows = store.timers().unwrap().len() as u64;
    assert!(rows <= pending, "{rows} timer rows for {pending} pending inputs");
    dibs_store::verify(&mut store).unwrap();

    // A restart re-arms none of the moot timers the rows still hold (every request ended:
    // only the settlement tick matters), and its first commit drops their rows.
    let providers =
        dibs_serve::simulated_providers_with(&dibs_core::catalog::bundled_catalog().offers, behaviour, 7);
    let (mut broker, _) =
        Broker::recover(Box::new(store), providers, None, broker::wall_clock(), None).unwrap();
    let armed = broker.take_over().unwrap();
    assert!(armed <= 1, "{armed} timers re-armed for {n} requests that all ended ({rows} rows)");
    broker.turn(Vec::new()).unwrap();
    drop(broker);
    let mut store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    assert!(store.timers().unwrap().len() <= 1, "the moot rows are gone");
}
