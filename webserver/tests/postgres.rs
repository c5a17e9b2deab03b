//! The PostgreSQL store's own matters, against a real throw-away server
//! (`rjs_harness::postgres`; `scripts/test.sh` installs Debian's `postgresql`): the schema is
//! migrated once however many web servers start at the same moment, and a database of a newer
//! schema is refused. (The store's behaviour is the conformance suite's, `tests/store.rs`.)

use std::sync::{Arc, Barrier};

use rjs_harness::postgres::{Postgres, bin_dir};
use rjs_webserver::store::StoreError;
use rjs_webserver::store::postgres::{PgOptions, PgStore};

fn server() -> Option<Postgres> {
    if let Err(e) = bin_dir() {
        println!("SKIP: {e:#}");
        return None;
    }
    Some(Postgres::start().expect("starting PostgreSQL"))
}

#[test]
fn servers_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(pg) = server() else { return };
    pg.create_db("rjs").unwrap();
    let url = pg.url("rjs");
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&PgOptions::new(url)).map(|s| s.database_version())
            })
        })
        .collect();
    for h in handles {
        let version = h.join().unwrap().unwrap().unwrap();
        assert_eq!(version, PgStore::schema_version());
    }
    // A database a newer program migrated: refused, not written to.
    let store = PgStore::connect(&PgOptions::new(url.clone())).unwrap();
    drop(store);
    pg.psql(
        "rjs",
        &format!(
            "UPDATE schema_version SET version = {}",
            PgStore::schema_version() + 1
        ),
    )
    .unwrap();
    match PgStore::connect(&PgOptions::new(url)) {
        Err(StoreError::Schema(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}
