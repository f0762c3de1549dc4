//! Bearer tokens with roles: `worker` may lease, renew and release and read
//! the pool (never a secret but its own lease's); `admin` may do anything.
//! Tokens come from a file or the environment, never from argv; only their
//! digests are kept, and a presented token is compared with each in
//! constant time.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use super::{App, Reopen};
use crate::cli::Failure;

/// The shortest TTL of an HTTP lease: a client must be able to renew in time.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Lease, renew, release; read lists, stats and events.
    Worker,
    /// Everything: add, import, disable, enable, remove, reset locks.
    Admin,
}

impl Role {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

/// The tokens the server takes; none at all means no auth (loopback only).
pub(crate) struct Tokens {
    /// Two keyed digests of each token (so a token is not kept in memory
    /// as given), with its role.
    digests: Vec<([u64; 2], Role)>,
    keys: [RandomState; 2],
}

/// Variables that may hold tokens, with the role they give.
const VARIABLES: [(&str, Role); 2] = [
    ("CREDPOOL_WORKER_TOKEN", Role::Worker),
    ("CREDPOOL_ADMIN_TOKEN", Role::Admin),
];

/// Shorter tokens are refused: they could be guessed.
const MIN_TOKEN: usize = 16;

impl Tokens {
    /// No tokens: no auth.
    pub(crate) fn none() -> Self {
        Tokens {
            digests: Vec::new(),
            keys: [RandomState::new(), RandomState::new()],
        }
    }

    /// Reads the tokens of `--auth-file` and the environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, Failure> {
        let mut tokens = Tokens::none();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                Failure(format!(
                    "{}: cannot read the auth file: {error}",
                    path.display()
                ))
            })?;
            if super::super::shared_mode(path) {
                errln!(
                    "warning: {} holds tokens and other users can read it: chmod 600 it",
                    path.display()
                );
            }
            let before = tokens.digests.len();
            for (index, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let at = format!("{}: line {}", path.display(), index + 1);
                let mut words = line.split_whitespace();
                let (Some(role), Some(token), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(Failure(format!(
                        "{at}: write one `ROLE TOKEN` a line (ROLE: worker or admin)"
                    )));
                };
                let role = match role {
                    "worker" => Role::Worker,
                    "admin" => Role::Admin,
                    other => {
                        return Err(Failure(format!(
                            "{at}: unknown role {other:?}: write worker or admin"
                        )))
                    }
                };
                tokens.add(token, role, &at)?;
            }
            // Asked for auth and given none: never serve without it.
            if tokens.digests.len() == before {
                return Err(Failure(format!(
                    "{}: the auth file holds no tokens, so the server would run without auth: \
                     write one `ROLE TOKEN` a line (ROLE: worker or admin)",
                    path.display()
                )));
            }
        }
        for (variable, role) in VARIABLES {
            if let Some(value) = super::super::from_env(variable) {
                for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    tokens.add(token, role, &format!("${variable}"))?;
                }
            }
        }
        Ok(tokens)
    }

    fn add(&mut self, token: &str, role: Role, at: &str) -> Result<(), Failure> {
        if token.len() < MIN_TOKEN {
            return Err(Failure(format!(
                "{at}: a token must be at least {MIN_TOKEN} characters (one from \
                 `head -c 24 /dev/urandom | base64` will do)"
            )));
        }
        let digest = self.digest(token);
        self.digests.push((digest, role));
        Ok(())
    }

    fn digest(&self, token: &str) -> [u64; 2] {
        [self.keys[0].hash_one(token), self.keys[1].hash_one(token)]
    }

    /// No tokens: every request may do everything (loopback only).
    pub(crate) fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// "auth: 2 worker and 1 admin tokens".
    pub(crate) fn describe(&self) -> String {
        let admins = self
            .digests
            .iter()
            .filter(|(_, role)| *role == Role::Admin)
            .count();
        format!(
            "bearer auth: {} worker and {admins} admin tokens",
            self.digests.len() - admins
        )
    }

    /// The role of a presented token, or `None`. Every digest is compared,
    /// each in constant time, whatever matches.
    pub(crate) fn role_of(&self, token: &str) -> Option<Role> {
        let presented = self.digest(token);
        let mut found: Option<Role> = None;
        for (digest, role) in &self.digests {
            let difference = (digest[0] ^ presented[0]) | (digest[1] ^ presented[1]);
            let same = std::hint::black_box(difference) == 0;
            if same {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

impl<S: Reopen> App<S> {
    /// Checks the request's bearer token against the role it needs.
    pub(crate) fn allow(&self, headers: &HeaderMap, need: Role) -> Result<Role, ApiError> {
        if self.tokens.is_open() {
            return Ok(Role::Admin);
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs a token: send `Authorization: Bearer TOKEN`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(role) = token.and_then(|token| self.tokens.role_of(token)) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the Authorization header holds no token this server knows: send `Authorization: Bearer TOKEN`",
            ));
        };
        if role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token given is a {} token",
                    need.label(),
                    role.label()
                ),
            ));
        }
        Ok(role)
    }

    /// The TTL a request asks for (the server's when none), if it is
    /// one this server allows.
    pub(crate) fn ttl(&self, asked: Option<Duration>) -> Result<Duration, ApiError> {
        let ttl = asked.unwrap_or(self.lease_ttl);
        if ttl > self.max_ttl {
            return Err(ApiError::bad_request(format!(
                "field `ttl`: {} is longer than this server allows ({}, credpool serve --max-ttl)",
                humantime::format_duration(ttl),
                humantime::format_duration(self.max_ttl)
            )));
        }
        if ttl < MIN_TTL {
            return Err(ApiError::bad_request(format!(
                "field `ttl`: {} is shorter than an HTTP lease may live ({}): a renew could not arrive in time",
                humantime::format_duration(ttl),
                humantime::format_duration(MIN_TTL)
            )));
        }
        Ok(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_its_role_and_no_other() {
        let mut tokens = Tokens {
            digests: Vec::new(),
            keys: [RandomState::new(), RandomState::new()],
        };
        assert!(tokens.is_open());
        tokens
            .add("worker-token-0123456789", Role::Worker, "test")
            .unwrap();
        tokens
            .add("admin-token-0123456789", Role::Admin, "test")
            .unwrap();
        assert!(!tokens.is_open());
        assert_eq!(
            tokens.role_of("worker-token-0123456789"),
            Some(Role::Worker)
        );
        assert_eq!(tokens.role_of("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(tokens.role_of("worker-token-012345678"), None);
        assert_eq!(tokens.role_of(""), None);
        let short = tokens.add("short", Role::Admin, "here").unwrap_err();
        assert!(short.0.contains("at least 16"), "{}", short.0);
        assert!(
            !short.0.contains("short\""),
            "a token is never echoed: {}",
            short.0
        );
    }
}
