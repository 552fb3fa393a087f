//! Scopes, and which callers each method admits (docs/access.md).

use std::{collections::HashMap, fmt};

/// A right a credential may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    UsersRead,
    UsersWrite,
    UsersDelete,
    UsersAuthenticate,
    PurgeRead,
    EntriesRead,
    EntriesWrite,
    UsersChanges,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::UsersDelete,
        Scope::UsersAuthenticate,
        Scope::PurgeRead,
        Scope::EntriesRead,
        Scope::EntriesWrite,
        Scope::UsersChanges,
    ];

    /// The scope's name in credentials files and in `MISSING_SCOPE` errors.
    pub fn name(self) -> &'static str {
        match self {
            Scope::UsersRead => "users.read",
            Scope::UsersWrite => "users.write",
            Scope::UsersDelete => "users.delete",
            Scope::UsersAuthenticate => "users.authenticate",
            Scope::PurgeRead => "purge.read",
            Scope::EntriesRead => "entries.read",
            Scope::EntriesWrite => "entries.write",
            Scope::UsersChanges => "users.changes",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Scope names as a credentials file lists them; `*` is every scope.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut scopes = Scopes::default();
        for name in names {
            let name = name.trim();
            if name == "*" {
                scopes = Scopes::all();
                continue;
            }
            let scope = Scope::ALL
                .into_iter()
                .find(|scope| scope.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown scope {name:?}: expected one of {}, or *",
                        Scope::ALL.map(Scope::name).join(", ")
                    )
                })?;
            scopes.0 |= scope.bit();
        }
        Ok(scopes)
    }

    pub fn names(self) -> Vec<&'static str> {
        if self == Scopes::all() {
            return vec!["*"];
        }
        Scope::ALL
            .into_iter()
            .filter(|scope| self.contains(*scope))
            .map(Scope::name)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Scopes(scopes.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Who may call one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a credential.
    Public,
    /// Any valid credential; the internal token only when `internal`.
    Authenticated { internal: bool },
    /// A credential holding `scope`; the internal token too when
    /// `internal`; a user token (for its own user only, checked by the
    /// handler) when `user_token`.
    Scoped {
        scope: Scope,
        internal: bool,
        user_token: bool,
    },
    /// The internal token alone.
    InternalOnly,
}

impl Access {
    /// A credential holding `scope`; no user token, no internal token.
    pub const fn scope(scope: Scope) -> Self {
        Access::Scoped {
            scope,
            internal: false,
            user_token: false,
        }
    }

    /// A credential holding `scope`, or a user token for its own user.
    pub const fn scope_or_own_user(scope: Scope) -> Self {
        Access::Scoped {
            scope,
            internal: false,
            user_token: true,
        }
    }
}

/// The access rule of every method a listener serves, by request path.
#[derive(Debug, Clone, Default)]
pub struct Policy(HashMap<String, Access>);

impl Policy {
    /// `methods` are a service's method names (`GetUser`) with their rule;
    /// health and reflection are added.
    pub fn new(service_name: &str, methods: &[(&str, Access)]) -> Self {
        let mut rules: HashMap<String, Access> = methods
            .iter()
            .map(|(method, access)| (format!("/{service_name}/{method}"), *access))
            .collect();
        // Container health checks carry no token; the internal token may
        // watch health too. Watch streams as long as the client likes, so
        // it needs a credential.
        rules.insert("/grpc.health.v1.Health/Check".to_owned(), Access::Public);
        rules.insert(
            "/grpc.health.v1.Health/Watch".to_owned(),
            Access::Authenticated { internal: true },
        );
        // The schema is public (it is in the repository): reflection lets
        // grpcurl call ListTokenKeys, or learn the API, without a credential.
        for reflection in [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            rules.insert(reflection.to_owned(), Access::Public);
        }
        Self(rules)
    }

    /// Whether this listener serves `path`.
    pub fn knows(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    /// The rule for a request path. Unknown paths admit any caller but the
    /// internal token (and then get UNIMPLEMENTED).
    pub fn access(&self, path: &str) -> Access {
        self.0
            .get(path)
            .copied()
            .unwrap_or(Access::Authenticated { internal: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_by_name_and_star_is_every_scope() {
        let scopes = Scopes::parse(["entries.read", "users.changes"]).expect("scopes");
        assert!(scopes.contains(Scope::EntriesRead));
        assert!(scopes.contains(Scope::UsersChanges));
        assert!(!scopes.contains(Scope::EntriesWrite));
        assert_eq!(scopes.names(), ["entries.read", "users.changes"]);
        assert_eq!(Scopes::parse(["*"]).expect("star"), Scopes::all());
        let error = Scopes::parse(["entries.delete"]).expect_err("unknown");
        assert!(error.contains("entries.delete"), "{error}");
    }
}
