#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod books;
mod credential;
mod error;
mod events;
mod lease;
mod pool;
pub mod store;
mod wait;

pub use credential::{
    validate_name, Credential, CredentialId, CredentialInfo, CredentialState, NewCredential,
    Secret, Stats, MAX_CAPACITY, MAX_EXTRA_BYTES, MAX_NAME_BYTES, MAX_SECRET_BYTES, MIN_LEASE_TTL,
};
pub use error::{Error, InvalidInput, Result};
pub use events::{Event, Events, RecvError};
pub use lease::{Grant, Lease, LeaseId, LeaseToken, ReleaseOutcome};
pub use pool::{Pool, PoolBuilder};
pub use store::memory::MemoryStore;
pub use store::{ExpiredLease, GrantAttempt, OnDuplicate, Receipt, Store};
