//! What one grant asks for: any credential, one that serves a scope, one
//! by name. Above the credential and the limits, which it checks against.

use std::fmt;
use std::sync::Arc;

use crate::credential::validate_name;
use crate::error::Result;
use crate::limits::validate_scope;

/// What one grant asks for: the default (any credential, default scope),
/// a scope, a named credential, or both.
///
/// ```
/// use credpool::Want;
/// let want = Want::scope("search")?.named("alice")?;
/// assert_eq!(want.scope_name(), Some("search"));
/// assert_eq!(want.name(), Some("alice"));
/// assert!(Want::any().is_any());
/// # Ok::<(), credpool::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Want {
    scope: Option<Arc<str>>,
    name: Option<Arc<str>>,
    /// Units of capacity taken at once (1 unless weighted).
    units: u32,
}

impl Default for Want {
    fn default() -> Self {
        Self {
            scope: None,
            name: None,
            units: 1,
        }
    }
}

/// The most units one grant may take at once.
pub const MAX_UNITS: u32 = 1_000_000;

impl Want {
    /// Any credential, for the default scope: what [`Pool::acquire`](crate::Pool::acquire) asks.
    pub fn any() -> Self {
        Self::default()
    }

    /// Any credential that may serve `scope` now.
    pub fn scope(scope: &str) -> Result<Self> {
        Self::any().in_scope(scope)
    }

    /// The same, for `scope`.
    pub fn in_scope(mut self, scope: &str) -> Result<Self> {
        validate_scope(scope)?;
        self.scope = Some(scope.into());
        Ok(self)
    }

    /// Only the credential named `name`.
    pub fn named(mut self, name: &str) -> Result<Self> {
        validate_name(name)?;
        self.name = Some(name.into());
        Ok(self)
    }

    /// Takes `units` of the credential's capacity at once, and counts
    /// `units` grants against its quotas (qpool's weighted acquire): a job
    /// that needs 3 of an account's 5 concurrent slots asks for 3. From 1
    /// to [`MAX_UNITS`]; 1 is a plain grant.
    ///
    /// ```
    /// use credpool::Want;
    /// let heavy = Want::any().units(3)?;
    /// assert_eq!(heavy.units_asked(), 3);
    /// assert!(Want::any().units(0).is_err());
    /// # Ok::<(), credpool::Error>(())
    /// ```
    pub fn units(mut self, units: u32) -> Result<Self> {
        if units == 0 || units > MAX_UNITS {
            return Err(crate::error::InvalidInput::new(
                "units",
                format!("{units} is not a number of units to take: ask for 1 to {MAX_UNITS}"),
            )
            .into());
        }
        self.units = units;
        Ok(self)
    }

    /// How many units of capacity a grant takes (1 unless weighted).
    pub fn units_asked(&self) -> u32 {
        self.units
    }

    /// Whether the grant takes more than one unit at once.
    pub fn is_weighted(&self) -> bool {
        self.units > 1
    }

    /// The same ask for one unit: the key of its waiting line, which
    /// weighted and plain asks for the same thing share.
    pub(crate) fn one_unit(&self) -> Self {
        Self {
            units: 1,
            ..self.clone()
        }
    }

    /// Whether `other` asks for the same, of any weight: they wait in one line.
    pub(crate) fn same_line(&self, other: &Want) -> bool {
        self.scope == other.scope && self.name == other.name
    }

    /// The scope, if not the default.
    pub fn scope_name(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The credential's name, when one is asked for.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this is the plain ask: any credential, default scope, one
    /// unit.
    pub fn is_any(&self) -> bool {
        self.scope.is_none() && self.name.is_none() && self.units == 1
    }

    /// Whether it asks for any credential in the default scope (of any
    /// weight).
    pub(crate) fn is_unscoped_any(&self) -> bool {
        self.scope.is_none() && self.name.is_none()
    }

    /// The scope as stores key it: `""` for the default.
    pub(crate) fn scope_key(&self) -> &str {
        self.scope.as_deref().unwrap_or("")
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.scope) {
            (None, None) => f.write_str("a free credential")?,
            (None, Some(scope)) => write!(f, "a free credential for scope {scope:?}")?,
            (Some(name), None) => write!(f, "credential {name:?}")?,
            (Some(name), Some(scope)) => write!(f, "credential {name:?} for scope {scope:?}")?,
        }
        if self.units > 1 {
            write!(f, " with {} units free", self.units)?;
        }
        Ok(())
    }
}
