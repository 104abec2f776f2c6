//! Versioned schema migrations, one list per backend (as atuin keeps them): each step is a
//! numbered SQL file under `migrations/{sqlite,postgres}/`, applied once, in order, in the
//! transaction that records its number. A start on an older database brings it up to date;
//! a start on a database newer than this build is refused rather than guessed at.
//!
//! SQLite keeps the version in the file header (`PRAGMA user_version`); PostgreSQL in a
//! `schema_migrations` table of the dibs schema, written under the advisory lock every
//! replica takes, so two replicas starting together migrate once.

use crate::StoreError;

/// One step of a backend's schema.
#[derive(Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migrations {
    ($backend:literal: $($version:literal $name:literal),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $backend, "/", $name, ".sql")),
        }),*]
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite": 1 "0001_tables", 2 "0002_ledger_by_request", 3 "0003_token_lifetimes", 4 "0004_leader_epoch", 5 "0005_ledger_integrity", 6 "0006_snapshots", 7 "0007_lead_lease");
pub const POSTGRES: &[Migration] = migrations!("postgres": 1 "0001_tables", 2 "0002_ledger_by_request", 3 "0003_token_lifetimes", 4 "0004_leader_epoch", 5 "0005_ledger_integrity", 6 "0006_snapshots", 7 "0007_lead_lease");

/// The version a backend's list brings a database to.
pub fn latest(migrations: &[Migration]) -> u32 {
    migrations.last().map_or(0, |m| m.version)
}

/// The steps a database at `current` still needs; an error when it is newer than this build.
pub fn pending(migrations: &'static [Migration], current: u32) -> Result<&'static [Migration], StoreError> {
    let latest = latest(migrations);
    if current > latest {
        return Err(StoreError::Invalid(format!(
            "the database is at schema version {current}, newer than this dibs knows (up to {latest}); \
             run the dibs that wrote it, or a newer one"
        )));
    }
    Ok(&migrations[migrations.partition_point(|m| m.version <= current)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_and_the_backends_agree() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "{}", m.name);
                assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
            }
        }
        let names = |list: &[Migration]| list.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES), "a step on one backend has its twin on the other");
    }

    #[test]
    fn pending_is_what_comes_after_the_current_version() {
        assert_eq!(pending(SQLITE, 0).unwrap().len(), SQLITE.len());
        assert!(pending(SQLITE, latest(SQLITE)).unwrap().is_empty());
        assert_eq!(pending(SQLITE, 1).unwrap()[0].version, 2);
        let newer = pending(SQLITE, latest(SQLITE) + 1).unwrap_err().to_string();
        assert!(newer.contains("newer than this dibs"), "{newer}");
    }
}
