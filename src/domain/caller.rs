//! Who is asking. The HTTP layer authenticates a request (`FS_AUTH`) and hands the domain a
//! [`Caller`]; the domain decides from it what the request may see and whom new images and
//! upload sessions belong to.
//!
//! With authentication off every request is [`Caller::Anonymous`] and may do everything, as in
//! the EdgeGallery original (which relied on the gateway in front of it).

use sha2::{Digest, Sha256};

/// What an authenticated caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sees and manages its own images and uploads only.
    User,
    /// Sees and manages every user's images and uploads, sets quotas, may act for a user.
    Admin,
}

impl Role {
    /// `user` | `admin` (the tokens file's and the audit log's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`FS_AUTH=none`): no identity, every right.
    Anonymous,
    /// A user or service that proved who it is (a token or a JWT).
    User { id: String, role: Role },
}

/// The caller may not act for the user it named (403, `FORBIDDEN`).
#[derive(Debug, thiserror::Error)]
#[error("userId {named:?} is not the authenticated user; only an admin may act for another user")]
pub struct NotYours {
    pub named: String,
}

impl Caller {
    /// An authenticated caller.
    pub fn user(id: impl Into<String>, role: Role) -> Self {
        Caller::User {
            id: id.into(),
            role,
        }
    }

    /// The authenticated user's id; `None` when authentication is off.
    pub fn id(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::User { id, .. } => Some(id),
        }
    }

    /// The authenticated role; `None` when authentication is off.
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Anonymous => None,
            Caller::User { role, .. } => Some(*role),
        }
    }

    /// Whether the caller may see and manage everything: an admin, or anyone with
    /// authentication off.
    pub fn sees_all(&self) -> bool {
        matches!(
            self,
            Caller::Anonymous
                | Caller::User {
                    role: Role::Admin,
                    ..
                }
        )
    }

    /// Whether the caller may see and manage what `owner` owns.
    pub fn may_access(&self, owner: &str) -> bool {
        self.sees_all() || self.id() == Some(owner)
    }

    /// The owner a listing is limited to: the caller's own id for a user (asking for another
    /// user's is refused); what was asked (`userId`, if any) for an admin or with
    /// authentication off.
    pub fn list_filter<'a>(&'a self, asked: Option<&'a str>) -> Result<Option<&'a str>, NotYours> {
        match self {
            Caller::User {
                id,
                role: Role::User,
            } => match asked {
                Some(other) if other != id => Err(NotYours {
                    named: other.to_string(),
                }),
                _ => Ok(Some(id)),
            },
            _ => Ok(asked),
        }
    }

    /// The user that what this request makes belongs to, from the `userId` field as sent
    /// (empty when absent):
    /// - authentication off: the field as sent (free text, as in the original);
    /// - a user: its own id; a field naming someone else is refused;
    /// - an admin: the field when it names someone (acting for that user), else its own id.
    pub fn acting_for(&self, field: &str) -> Result<String, NotYours> {
        match self {
            Caller::Anonymous => Ok(field.to_string()),
            Caller::User { id, role } => {
                if field.is_empty() || field == id {
                    Ok(id.clone())
                } else if *role == Role::Admin {
                    Ok(field.to_string())
                } else {
                    Err(NotYours {
                        named: field.to_string(),
                    })
                }
            }
        }
    }

    /// The owner recorded for an upload session this caller opens or addresses (see
    /// [`session_key`]): `None` with authentication off (one namespace of identifiers for
    /// everyone, as in the original), else [`Caller::acting_for`].
    pub fn session_owner(&self, field: &str) -> Result<Option<String>, NotYours> {
        match self {
            Caller::Anonymous => Ok(None),
            Caller::User { .. } => self.acting_for(field).map(Some),
        }
    }
}

/// The key an upload session is stored under: the client's `identifier` itself when the
/// session has no owner (authentication off: today's rows and behaviour), else the identifier
/// followed by `~` and the first 32 hex digits of the owner's SHA-256. Identifiers never hold
/// `~` (see `ids::Identifier`), so two users' sessions never share a key, and an owned key
/// never equals an unowned one.
pub fn session_key(owner: Option<&str>, identifier: &str) -> String {
    match owner {
        None => identifier.to_string(),
        Some(owner) => {
            let digest = Sha256::digest(owner.as_bytes());
            format!("{identifier}~{}", &hex::encode(digest)[..32])
        }
    }
}

/// The client's `identifier` of a stored session key (the inverse of [`session_key`]).
pub fn client_identifier(key: &str) -> &str {
    key.split_once('~')
        .map_or(key, |(identifier, _)| identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_see_their_own_admins_and_anonymous_everything() {
        let alice = Caller::user("alice", Role::User);
        let admin = Caller::user("root", Role::Admin);
        assert!(alice.may_access("alice"));
        assert!(!alice.may_access("bob"));
        assert!(admin.may_access("bob"));
        assert!(Caller::Anonymous.may_access("bob"));
        assert!(alice.list_filter(Some("bob")).is_err());
        assert_eq!(alice.list_filter(Some("alice")).unwrap(), Some("alice"));
        assert_eq!(alice.list_filter(None).unwrap(), Some("alice"));
        assert_eq!(admin.list_filter(Some("bob")).unwrap(), Some("bob"));
        assert_eq!(admin.list_filter(None).unwrap(), None);
        assert_eq!(Caller::Anonymous.list_filter(None).unwrap(), None);
    }

    #[test]
    fn only_admins_act_for_others() {
        let alice = Caller::user("alice", Role::User);
        let admin = Caller::user("root", Role::Admin);
        assert_eq!(alice.acting_for("").unwrap(), "alice");
        assert_eq!(alice.acting_for("alice").unwrap(), "alice");
        assert!(alice.acting_for("bob").is_err());
        assert_eq!(admin.acting_for("bob").unwrap(), "bob");
        assert_eq!(admin.acting_for("").unwrap(), "root");
        assert_eq!(Caller::Anonymous.acting_for("bob").unwrap(), "bob");
        assert_eq!(Caller::Anonymous.session_owner("bob").unwrap(), None);
        assert_eq!(alice.session_owner("").unwrap().as_deref(), Some("alice"));
    }

    #[test]
    fn session_keys_separate_owners() {
        assert_eq!(session_key(None, "abc"), "abc");
        let a = session_key(Some("alice"), "abc");
        let b = session_key(Some("bob"), "abc");
        assert_ne!(a, b);
        assert_ne!(a, "abc");
        assert_eq!(client_identifier(&a), "abc");
        assert_eq!(client_identifier("abc"), "abc");
        // A user named like another user's key cannot reach it either.
        assert_ne!(session_key(Some(""), "abc"), "abc");
    }
}
