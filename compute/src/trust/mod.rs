//! The owner's trust store and the gatekeeper that decides, for each job, whether its author
//! may run code on this PC. See `docs/compute-node.md` ("Trust store and prompt").
//!
//! * [`TrustStore`]: `<data>/trust.json` (mode 0600, written atomically), one entry per
//!   author fingerprint, `trusted` or `blocked`. Changes are read-modify-write under an
//!   exclusive `flock` on `<data>/trust.json.lock`, so `rjs-compute trust add` and a running
//!   node answering a prompt never lose each other's change; a running node notices a changed
//!   file (by inode, size and mtime) at its next decision, without a restart.
//! * [`Gatekeeper`]: trusted → run; blocked → refuse without asking; unknown → ask the owner
//!   once through a [`Prompter`] (several jobs of the same unknown author waiting at the same
//!   time share the one answer), or refuse when no one can be asked.

mod gatekeeper;
mod store;

pub use gatekeeper::{Answer, Decision, Gatekeeper, JobRequest, PromptOutcome, Prompter, Question};
pub use store::{
    AuthorRef, Change, EntryStatus, TRUST_FILE, TRUST_FORMAT, TrustEntry, TrustError, TrustStatus,
    TrustStore,
};
