//! What `dibs` exits with. Scripts branch on these, so each has one meaning across the
//! commands, and README.md lists them.
//!
//! An error that reaches `main` is bad input unless it says otherwise: it is looked up in
//! [`Exit::for_error`], the one place that tells an error's kind from its code.
//! `dibs serve` also stops the process itself, from `dibs-serve`, with
//! `dibs_serve::EXIT_LOST_LEAD` (75, a replica on PostgreSQL that lost the lead or its
//! database and could not start again as a standby: normally it does, `dibs_serve::rejoin`)
//! and `dibs_serve::EXIT_LEDGER_UNWRITABLE` (70, a SQLite ledger that could not be written).

use std::fmt;
use std::process::ExitCode;

/// A process exit status of `dibs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done: awarded, checked, verified, answered.
    Success = 0,
    /// What was checked does not hold: contract files that are not valid (`place`,
    /// `contract check`), a ledger that does not verify (`ledger verify`).
    Invalid = 1,
    /// Bad input: arguments (clap's usage errors exit 2 too), files that cannot be read, a
    /// request the server refused.
    BadInput = 2,
    /// `place`: the request went unfilled.
    Unfilled = 3,
    /// `simulate`: a run broke an invariant (the seed to reproduce it is printed).
    InvariantBroken = 4,
    /// `request`, `token`: the server could not be reached (sysexits' EX_UNAVAILABLE).
    Unavailable = 69,
}

impl Exit {
    /// The status for an error that ended a command.
    pub fn for_error(error: &anyhow::Error) -> Self {
        if error.downcast_ref::<Unreachable>().is_some() {
            Self::Unavailable
        } else if error.downcast_ref::<dibs_core::contract::ContractError>().is_some() {
            Self::Invalid
        } else {
            Self::BadInput
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// The context of an error that means the server could not be reached (`GET URL`): it
/// reads as that text, and makes the command exit [`Exit::Unavailable`].
#[derive(Debug)]
pub struct Unreachable(pub String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
