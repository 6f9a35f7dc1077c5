//! Static API tokens (`FS_AUTH_TOKENS_FILE`), for services (the app store, the lifecycle
//! manager) and operators. The file holds only SHA-256 hashes of the tokens, one per line:
//!
//! ```text
//! # comment
//! sha256:<64 hex digits of SHA-256(token)> <userId> <role>
//! ```
//!
//! with role `user` or `admin`. A presented token is hashed and its hash looked up in a map,
//! so the lookup never compares a secret byte by byte. Errors name the line, never its hash.

use crate::domain::caller::{Caller, Role};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

/// Whose a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub user: String,
    pub role: Role,
}

/// Token hashes and their owners.
pub type TokenMap = HashMap<[u8; 32], TokenOwner>;

/// A tokens file as read: the tokens of its good lines, and every bad line as
/// `line N: what is wrong`.
pub struct Parsed {
    pub map: TokenMap,
    pub problems: Vec<String>,
}

/// Parses a tokens file. A hash listed twice grants nothing (which owner was meant cannot be
/// told); every other good line is in `map`, whatever the bad lines around it.
pub fn parse(text: &str) -> Parsed {
    let mut map = TokenMap::new();
    let mut twice = std::collections::HashSet::new();
    let mut problems = vec![];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hash, user, role] = fields[..] else {
            problems.push(format!(
                "line {n}: expected `sha256:<64 hex digits> <userId> <role>` ({} fields found)",
                fields.len()
            ));
            continue;
        };
        let digest = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok());
        let Some(digest) = digest else {
            // Not quoted: it may be a token pasted by mistake.
            problems.push(format!(
                "line {n}: the first field must be sha256: followed by the 64 hex digits of \
                 the token's SHA-256 (the file holds hashes, never tokens)"
            ));
            continue;
        };
        let role = match role.to_ascii_lowercase().as_str() {
            "user" => Role::User,
            "admin" => Role::Admin,
            _ => {
                problems.push(format!(
                    "line {n}: role {role:?} is not valid: expected user or admin"
                ));
                continue;
            }
        };
        if !super::usable_user_id(user) {
            problems.push(format!(
                "line {n}: the userId must be at most 255 bytes without control characters"
            ));
            continue;
        }
        let owner = TokenOwner {
            user: user.to_string(),
            role,
        };
        if map.insert(digest, owner).is_some() {
            twice.insert(digest);
            problems.push(format!("line {n}: the same token hash is listed twice"));
        }
    }
    map.retain(|digest, _| !twice.contains(digest));
    Parsed { map, problems }
}

/// Reads and parses a tokens file: its tokens, or (when it cannot be read, or has a bad line)
/// an error naming the file and every bad line, and the tokens of its good lines (none when
/// it cannot be read).
pub fn load(path: &Path) -> Result<TokenMap, (String, TokenMap)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let e = format!(
            "FS_AUTH_TOKENS_FILE {}: cannot be read: {e}",
            path.display()
        );
        (e, TokenMap::new())
    })?;
    let Parsed { map, problems } = parse(&text);
    if problems.is_empty() {
        return Ok(map);
    }
    let e = format!(
        "FS_AUTH_TOKENS_FILE {}: {}",
        path.display(),
        problems.join("; ")
    );
    Err((e, map))
}

/// What tells one version of the file from the next: modification time, length and inode
/// (an atomic replacement, as a Kubernetes Secret update makes, changes the inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

struct Loaded {
    map: Arc<TokenMap>,
    /// The version loaded, or the last one that failed (not retried until it changes again).
    stamp: Option<Stamp>,
}

/// The tokens in force, reloaded from their file.
pub struct TokenStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The file changed and its tokens are in force now (how many).
    Reloaded(usize),
    /// The file changed but could not be read, or has bad lines: only the tokens of its good
    /// lines are in force now (how many), none when it cannot be read. A bad line grants
    /// nothing until it is fixed, so a mistake never keeps a revoked or demoted token alive.
    Partly(usize),
}

impl TokenStore {
    /// Loads the file; an error names the file and every bad line.
    pub fn open(path: &Path) -> Result<Self, String> {
        let stamp = stamp(path);
        let map = load(path).map_err(|(e, _)| e)?;
        Ok(TokenStore {
            path: path.to_path_buf(),
            loaded: RwLock::new(Loaded {
                map: Arc::new(map),
                stamp,
            }),
        })
    }

    /// The caller a token belongs to, if it is listed.
    pub fn lookup(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let map = self.loaded.read().expect("tokens lock").map.clone();
        map.get(&digest)
            .map(|o| Caller::user(o.user.clone(), o.role))
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.loaded.read().expect("tokens lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reloads the file if it changed since the last look (or always, when `force`d: SIGHUP).
    /// A file that cannot be read grants nothing, one with bad lines only its good lines'
    /// tokens (fail closed: deleting the file or a line revokes, whatever else is wrong); the
    /// problems are logged, by line numbers only.
    pub fn reload(&self, force: bool) -> Reload {
        let now = stamp(&self.path);
        let previous = self.loaded.read().expect("tokens lock").stamp;
        if !force && now == previous {
            return Reload::Unchanged;
        }
        let result = load(&self.path);
        let mut loaded = self.loaded.write().expect("tokens lock");
        loaded.stamp = now;
        match result {
            Ok(map) => {
                let n = map.len();
                loaded.map = Arc::new(map);
                tracing::info!(file = %self.path.display(), tokens = n, "API tokens reloaded");
                Reload::Reloaded(n)
            }
            Err((e, map)) => {
                let n = map.len();
                loaded.map = Arc::new(map);
                tracing::error!(error = %e, tokens = n, "API tokens reloaded in part: only the good lines' tokens are in force");
                Reload::Partly(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(token: &str, user: &str, role: &str) -> String {
        format!(
            "sha256:{} {user} {role}\n",
            hex::encode(Sha256::digest(token))
        )
    }

    #[test]
    fn good_files_parse_with_comments_and_blank_lines() {
        // A comment goes on a line of its own: after a token's fields it is a fourth field.
        let commented = parse(&format!(
            "{} # appstore\n",
            line("t1", "a", "user").trim_end()
        ));
        assert!(commented.map.is_empty() && commented.problems.len() == 1);
        let text = format!(
            "# services\n\n{}   \n# operators\n{}",
            line("t1", "appstore", "admin"),
            line("t2", "alice", "User")
        );
        let Parsed { map, problems } = parse(&text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(map.len(), 2);
        let d: [u8; 32] = Sha256::digest("t2").into();
        assert_eq!(
            map[&d],
            TokenOwner {
                user: "alice".into(),
                role: Role::User
            }
        );
    }

    #[test]
    fn bad_lines_are_named_by_number_never_by_hash() {
        let good = line("t1", "a", "user");
        let upper = line("t9", "a", "user").to_uppercase();
        let text = format!(
            "# c\n{good}plain-token-pasted-here alice user\nsha256:abcd alice user\n{}\n{}\nonly two\n{good}{upper}",
            line("t3", "bob", "root").trim_end(),
            "sha256:zz"
        );
        let parsed = parse(&text);
        // Only the good lines grant: not `good` (listed twice, on lines 2 and 8).
        assert!(parsed.map.is_empty(), "{:?}", parsed.map);
        let joined = parsed.problems.join("\n");
        assert!(
            joined.contains("line 3: the first field must be sha256:"),
            "{joined}"
        );
        assert!(joined.contains("line 4: the first field"), "{joined}");
        assert!(
            joined.contains("line 5: role \"root\" is not valid"),
            "{joined}"
        );
        assert!(joined.contains("line 6: expected `sha256:"), "{joined}");
        assert!(joined.contains("line 7: expected"), "{joined}");
        assert!(
            joined.contains("line 8: the same token hash is listed twice"),
            "{joined}"
        );
        // Upper-case "SHA256:" prefix is not the form.
        assert!(joined.contains("line 9: "), "{joined}");
        assert!(!joined.contains("plain-token"), "{joined}");
        assert!(
            !joined.contains(&hex::encode(Sha256::digest("t3"))),
            "{joined}"
        );
    }

    /// A `tokens` file holding `text` in a fresh directory (kept while the directory lives).
    fn tokens_file(text: impl AsRef<[u8]>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn lookup_hashes_the_token() {
        let (_dir, path) = tokens_file(line("s3cret", "appstore", "admin"));
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(
            store.lookup("s3cret"),
            Some(Caller::user("appstore", Role::Admin))
        );
        assert_eq!(store.lookup("s3cret "), None);
        assert_eq!(store.lookup(&hex::encode(Sha256::digest("s3cret"))), None);
    }

    #[test]
    fn reloads_when_changed_and_keeps_tokens_when_broken() {
        let (dir, path) = tokens_file(line("one", "alice", "user"));
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(store.reload(false), Reload::Unchanged);
        // Replaced atomically, as a Secret update does (new inode, maybe same size and time).
        let tmp = dir.path().join("tokens.new");
        std::fs::write(&tmp, line("two", "bobby", "user")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(store.reload(false), Reload::Reloaded(1));
        assert!(store.lookup("one").is_none());
        assert_eq!(store.lookup("two"), Some(Caller::user("bobby", Role::User)));
        // A line gone bad (a role mistyped while demoting an admin) grants nothing; the good
        // lines are in force (added, kept or revoked as they say), and the file is not read
        // again until it changes.
        let text = [
            line("two", "bobby", "administrator"),
            line("four", "dave", "user"),
        ]
        .concat();
        std::fs::write(&path, text).unwrap();
        assert_eq!(store.reload(false), Reload::Partly(1));
        assert_eq!(store.reload(false), Reload::Unchanged);
        assert_eq!(store.lookup("two"), None);
        assert_eq!(store.lookup("four"), Some(Caller::user("dave", Role::User)));
        // A broken file grants nothing.
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(store.reload(false), Reload::Partly(0));
        assert_eq!(store.lookup("four"), None);
        // A vanished file neither: deleting it revokes every token.
        std::fs::write(&path, line("four", "dave", "user")).unwrap();
        assert_eq!(store.reload(false), Reload::Reloaded(1));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(store.reload(false), Reload::Partly(0));
        assert_eq!(store.lookup("four"), None);
        // Forced (SIGHUP): read again whatever the stamp says.
        std::fs::write(&path, line("three", "carol", "admin")).unwrap();
        assert_eq!(store.reload(true), Reload::Reloaded(1));
        assert_eq!(
            store.lookup("three"),
            Some(Caller::user("carol", Role::Admin))
        );
    }

    #[test]
    fn a_bad_file_at_start_names_its_lines() {
        let (dir, path) = tokens_file("\n\nnope\n");
        let err = TokenStore::open(&path).err().unwrap();
        assert!(err.contains("line 3:"), "{err}");
        let err = TokenStore::open(&dir.path().join("missing")).err().unwrap();
        assert!(err.contains("cannot be read"), "{err}");
    }
}
