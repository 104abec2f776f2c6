//! `GET /v1/requests` and `dibs request list` are oldest first: `r-2` before `r-10`, open
//! and ended requests interleaved by age, and the `after` cursor agrees with that order, so
//! paging sees every request exactly once.

use dibs_core::contract;
use dibs_providers::{HolderBehaviour, SimulatedBehaviour};
use dibs_serve::broker::{self, Broker, Command, SubmitBody};
use dibs_store::SqliteStore;

/// How many times the test looks for the cheap requests to have ended, 50 ms apart.
const MAX_POLLS: usize = 200;

fn body(cheap: bool) -> SubmitBody {
    SubmitBody {
        accelerators: vec!["H100".into()],
        gpus: 8,
        duration_hours: 24,
        workload: "training".into(),
        // Below every offer: the request ends unfilled as soon as it is decided, and is
        // listed from the broker's ended requests rather than the engine's open ones.
        max_price: cheap.then_some(0.01),
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

/// Every id the listing gives, page after page of `limit`, with the number of pages.
fn list_all(
    tx: &std::sync::mpsc::Sender<Command>,
    status: Option<&str>,
    limit: usize,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for pages in 1..=100 {
        let status = status.map(str::to_owned);
        let page = ask(tx, |reply| Command::List { status, after: after.clone(), limit, reply });
        ids.extend(page["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return (ids, pages),
        }
    }
    panic!("more than 100 pages: {ids:?}");
}

fn ids(numbers: impl Iterator<Item = usize>) -> Vec<String> {
    numbers.map(|n| format!("r-{n}")).collect()
}

#[test]
fn requests_are_listed_oldest_first_and_pages_see_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let offers = dibs_core::catalog::bundled_catalog().offers;
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

    let n = 25;
    let cheap = |number: usize| number.is_multiple_of(3);
    for number in 1..=n {
        let answer = ask(&tx, |reply| Command::Submit {
            body: Box::new(body(cheap(number))),
            idempotency: None,
            reply,
        });
        assert_eq!(answer["id"], format!("r-{number}"), "{answer}");
    }
    let expected_unfilled = (1..=n).filter(|&k| cheap(k)).count();
    let mut unfilled = 0;
    for _ in 0..MAX_POLLS {
        let stats = ask(&tx, |reply| Command::Stats { reply });
        unfilled = stats["requests"]["unfilled"].as_u64().unwrap_or(0) as usize;
        if unfilled == expected_unfilled {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(unfilled, expected_unfilled, "the cheap requests did not end");

    // Open and ended requests together, three pages of ten: r-1 .. r-25 in submission
    // order, each once (text order would give r-1, r-10, r-11, ..., r-2).
    let (all, pages) = list_all(&tx, None, 10);
    assert_eq!(all, ids(1..=n));
    assert_eq!(pages, 3);
    // Only the ended ones, two to a page.
    let (ended, _) = list_all(&tx, Some("unfilled"), 2);
    assert_eq!(ended, ids((1..=n).filter(|&k| cheap(k))));
    // A cursor in the middle: everything submitted after r-9.
    let page = ask(&tx, |reply| Command::List { status: None, after: Some("r-9".into()), limit: 3, reply });
    let after_nine: Vec<&str> =
        page["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(after_nine, ["r-10", "r-11", "r-12"]);

    tx.send(Command::Shutdown).unwrap();
    thread.join().unwrap();
}
