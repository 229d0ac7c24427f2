//! Who a client is and what it may do, in Redis's terms: `requirepass`
//! (the `default` user's password) and ACL-style users, each with a
//! password and a permission set (`read`, `write`, `admin`).
//!
//! Passwords are stored only as salted PBKDF2-HMAC-SHA256 hashes
//! (`drkv passwd` makes one) and checked with ring's constant-time
//! verification; an unknown user costs the same work as a known one, so
//! timing does not tell which names exist. Nothing here ever logs or
//! prints a password or a hash: `ACL LIST` shows names and permissions
//! only.
//!
//! With no password configured at all, every client is the `default`
//! user with every permission (and protected mode, in the server, keeps
//! non-loopback clients out). As soon as one password is configured,
//! every client must authenticate; the `default` user then exists only
//! if `requirepass` is set.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The name `AUTH password` (one argument) authenticates as.
pub const DEFAULT_USER: &str = "default";
/// PBKDF2 rounds `drkv passwd` uses: about 5 ms of CPU here per
/// authentication (a connection authenticates once).
pub const HASH_ITERATIONS_DEFAULT: u32 = 20_000;
const HASH_ITERATIONS_MIN: u32 = 1_000;
const HASH_ITERATIONS_MAX: u32 = 10_000_000;
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";
const USERS_MAX: usize = 1024;
const USER_NAME_BYTES_MAX: usize = 128;

/// What a user may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read commands (`GET`, `MGET`, `SCAN`, ...).
    Read,
    /// Write commands (`SET`, `DEL`, `INCR`, ...).
    Write,
    /// The node's details: `INFO` beyond its `server` section, `ACL LIST`,
    /// `CLIENT LIST`.
    Admin,
    /// All of the above.
    #[default]
    All,
}

/// A set of [`Permission`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
    /// May see the node's details.
    pub admin: bool,
}

impl Permissions {
    /// Everything.
    pub const ALL: Self = Self {
        read: true,
        write: true,
        admin: true,
    };

    fn of(list: &[Permission]) -> Self {
        let mut permissions = Self::default();
        for permission in list {
            match permission {
                Permission::Read => permissions.read = true,
                Permission::Write => permissions.write = true,
                Permission::Admin => permissions.admin = true,
                Permission::All => permissions = Self::ALL,
            }
        }
        permissions
    }

    /// Whether every permission of `needed` is here.
    pub fn allow(&self, needed: Permission) -> bool {
        match needed {
            Permission::Read => self.read,
            Permission::Write => self.write,
            Permission::Admin => self.admin,
            Permission::All => *self == Self::ALL,
        }
    }

    /// Redis's ACL notation for these permissions.
    fn acl_rules(&self) -> String {
        if *self == Self::ALL {
            return "~* &* +@all".into();
        }
        let mut rules = vec!["~*", "&*", "-@all"];
        if self.read {
            rules.push("+@read");
        }
        if self.write {
            rules.push("+@write");
        }
        if self.admin {
            rules.push("+info +client|list +acl|list");
        }
        rules.join(" ")
    }
}

/// A user as the configuration file gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name clients give to `AUTH` and `HELLO ... AUTH`.
    pub name: String,
    /// The password's hash, as `drkv passwd` prints it.
    pub password: String,
    /// What the user may do (default: everything).
    #[serde(default = "all_permissions")]
    pub permissions: Vec<Permission>,
}

fn all_permissions() -> Vec<Permission> {
    vec![Permission::All]
}

/// An ACL file (`--acl-file`, like Redis's `aclfile`): TOML with an
/// optional `requirepass` and `[[users]]` tables (`name`, `password`,
/// `permissions`), kept apart from the node's other settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclFile {
    /// The `default` user's password hash.
    pub requirepass: Option<String>,
    /// Named users.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

impl AclFile {
    /// Reads and checks the file.
    pub fn load(path: &std::path::Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthConfigError(format!("cannot read {}: {e}", path.display())))?;
        let file: Self = toml::from_str(&text)
            .map_err(|e| AuthConfigError(format!("{}: {e}", path.display())))?;
        Users::new(file.requirepass.as_deref(), &file.users)
            .map_err(|e| AuthConfigError(format!("{}: {e}", path.display())))?;
        Ok(file)
    }
}

/// A configuration of users that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfigError(pub String);

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthConfigError {}

/// A salted password hash: `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; HASH_BYTES],
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the salt or the hash: Debug output reaches logs.
        f.write_str("PasswordHash(..)")
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &[u8], iterations: u32) -> Result<Self, AuthConfigError> {
        let iterations = check_iterations(iterations)?;
        let mut salt = vec![0; SALT_BYTES];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| AuthConfigError("the system has no random numbers".into()))?;
        let mut hash = [0; HASH_BYTES];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Reads a hash from the configuration.
    pub fn parse(text: &str) -> Result<Self, AuthConfigError> {
        let bad = |why: &str| {
            AuthConfigError(format!(
                "a password must be given as a hash made by `drkv passwd` \
                 ({SCHEME}$<iterations>$<salt>$<hash>): {why}"
            ))
        };
        let mut parts = text.split('$');
        let (Some(scheme), Some(iterations), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("not four fields separated by '$'"));
        };
        if scheme != SCHEME {
            return Err(bad("unknown scheme"));
        }
        let iterations = iterations
            .parse::<u32>()
            .map_err(|_| bad("the iteration count is not a number"))?;
        let iterations = check_iterations(iterations).map_err(|e| bad(&e.0))?;
        let salt = hex_decode(salt).ok_or_else(|| bad("the salt is not hex"))?;
        if salt.len() < 8 {
            return Err(bad("the salt is shorter than 8 bytes"));
        }
        let hash = hex_decode(hash)
            .and_then(|hash| <[u8; HASH_BYTES]>::try_from(hash).ok())
            .ok_or_else(|| bad("the hash is not 32 bytes of hex"))?;
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` is the one hashed, in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }
}

impl fmt::Display for PasswordHash {
    /// The configuration-file form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}${}${}${}",
            self.iterations,
            hex_encode(&self.salt),
            hex_encode(&self.hash)
        )
    }
}

fn check_iterations(iterations: u32) -> Result<NonZeroU32, AuthConfigError> {
    if !(HASH_ITERATIONS_MIN..=HASH_ITERATIONS_MAX).contains(&iterations) {
        return Err(AuthConfigError(format!(
            "the iteration count must be {HASH_ITERATIONS_MIN}..={HASH_ITERATIONS_MAX}"
        )));
    }
    Ok(NonZeroU32::new(iterations).expect("checked positive"))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

/// A user a connection is authenticated as.
#[derive(Debug)]
pub struct User {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub permissions: Permissions,
    password: Option<PasswordHash>,
}

/// The node's users.
#[derive(Debug)]
pub struct Users {
    users: Vec<Arc<User>>,
    /// No password configured: everyone is `default`, with everything.
    open: Option<Arc<User>>,
    /// Checked against for unknown names, so they cost the same time.
    decoy: PasswordHash,
}

impl Users {
    /// The users of a configuration: `requirepass` (a hash) for the
    /// `default` user, and the named users.
    pub fn new(
        requirepass: Option<&str>,
        configured: &[UserConfig],
    ) -> Result<Self, AuthConfigError> {
        if configured.len() > USERS_MAX {
            return Err(AuthConfigError(format!("at most {USERS_MAX} users")));
        }
        let mut users = Vec::new();
        if let Some(hash) = requirepass {
            users.push(Arc::new(User {
                name: DEFAULT_USER.into(),
                permissions: Permissions::ALL,
                password: Some(PasswordHash::parse(hash)?),
            }));
        }
        for user in configured {
            let name = &user.name;
            if name.is_empty()
                || name.len() > USER_NAME_BYTES_MAX
                || !name.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(AuthConfigError(format!(
                    "user name {name:?} must be 1..={USER_NAME_BYTES_MAX} printable ASCII characters"
                )));
            }
            if users.iter().any(|u| &u.name == name) {
                return Err(AuthConfigError(format!(
                    "user {name} is configured twice (requirepass is the user `default`)"
                )));
            }
            let password = PasswordHash::parse(&user.password)
                .map_err(|e| AuthConfigError(format!("user {name}: {e}")))?;
            users.push(Arc::new(User {
                name: name.clone(),
                permissions: Permissions::of(&user.permissions),
                password: Some(password),
            }));
        }
        let open = users.is_empty().then(|| {
            Arc::new(User {
                name: DEFAULT_USER.into(),
                permissions: Permissions::ALL,
                password: None,
            })
        });
        let decoy = PasswordHash {
            iterations: NonZeroU32::new(HASH_ITERATIONS_DEFAULT).expect("positive"),
            salt: vec![0x5a; SALT_BYTES],
            hash: [0; HASH_BYTES],
        };
        Ok(Self { users, open, decoy })
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        self.open.is_none()
    }

    /// Who a new connection is before any `AUTH`: `default` with every
    /// permission when no password is configured, else nobody.
    pub fn anonymous(&self) -> Option<Arc<User>> {
        self.open.clone()
    }

    /// The user `name` (default: `default`) if `password` is its password.
    /// Costs one hash whether or not the user exists.
    pub fn authenticate(&self, name: Option<&[u8]>, password: &[u8]) -> Option<Arc<User>> {
        let name = name.unwrap_or(DEFAULT_USER.as_bytes());
        if let Some(open) = &self.open {
            // Redis: with no password set, `AUTH` of the default user
            // with any password succeeds.
            return (name == DEFAULT_USER.as_bytes()).then(|| Arc::clone(open));
        }
        let user = self.users.iter().find(|u| u.name.as_bytes() == name);
        let hash = user
            .and_then(|u| u.password.as_ref())
            .unwrap_or(&self.decoy);
        let matches = hash.verify(password);
        user.filter(|_| matches).cloned()
    }

    /// `ACL USERS`: every user's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users
            .iter()
            .chain(&self.open)
            .map(|user| user.name.as_str())
    }

    /// `ACL LIST`: one line per user, never a password or hash.
    pub fn acl_list(&self) -> Vec<String> {
        self.users
            .iter()
            .chain(&self.open)
            .map(|user| {
                let password = if user.password.is_some() {
                    "#<hidden>"
                } else {
                    "nopass"
                };
                format!(
                    "user {} on {password} {}",
                    user.name,
                    user.permissions.acl_rules()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(password: &str) -> String {
        PasswordHash::new(password.as_bytes(), HASH_ITERATIONS_MIN)
            .unwrap()
            .to_string()
    }

    #[test]
    fn hashes_verify_their_password_only() {
        let text = hash("s3cret");
        let parsed = PasswordHash::parse(&text).unwrap();
        assert!(parsed.verify(b"s3cret"));
        assert!(!parsed.verify(b"s3cret "));
        assert!(!parsed.verify(b""));
        assert_eq!(parsed.to_string(), text);
        // Salted: the same password hashes differently each time.
        assert_ne!(hash("s3cret"), text);
        assert_eq!(format!("{parsed:?}"), "PasswordHash(..)");
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let good = hash("x");
        let fields: Vec<&str> = good.split('$').collect();
        for bad in [
            "plaintext".to_owned(),
            String::new(),
            format!("md5${}${}${}", fields[1], fields[2], fields[3]),
            format!("{}$0${}${}", fields[0], fields[2], fields[3]),
            format!("{}$99999999999${}${}", fields[0], fields[2], fields[3]),
            format!("{}${}$zz${}", fields[0], fields[1], fields[3]),
            format!("{}${}${}$abcd", fields[0], fields[1], fields[2]),
            format!("{good}$more"),
        ] {
            assert!(PasswordHash::parse(&bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn users_authenticate_with_their_permissions() {
        let users = Users::new(
            Some(&hash("admin-pass")),
            &[UserConfig {
                name: "reader".into(),
                password: hash("read-pass"),
                permissions: vec![Permission::Read],
            }],
        )
        .unwrap();
        assert!(users.required());
        assert!(users.anonymous().is_none());
        let admin = users.authenticate(None, b"admin-pass").unwrap();
        assert_eq!(admin.name, "default");
        assert_eq!(admin.permissions, Permissions::ALL);
        let reader = users.authenticate(Some(b"reader"), b"read-pass").unwrap();
        assert!(reader.permissions.allow(Permission::Read));
        assert!(!reader.permissions.allow(Permission::Write));
        assert!(!reader.permissions.allow(Permission::Admin));
        assert!(users.authenticate(Some(b"reader"), b"admin-pass").is_none());
        assert!(users.authenticate(Some(b"nobody"), b"read-pass").is_none());
        assert!(users.authenticate(None, b"read-pass").is_none());
        assert_eq!(users.names().collect::<Vec<_>>(), ["default", "reader"]);
        let listed = users.acl_list().join("\n");
        assert!(listed.contains("user reader on #<hidden> ~* &* -@all +@read"));
        // No hash (every one contains '$') is shown.
        assert!(!listed.contains('$'));
    }

    #[test]
    fn no_password_means_everyone_is_default() {
        let users = Users::new(None, &[]).unwrap();
        assert!(!users.required());
        assert_eq!(users.anonymous().unwrap().permissions, Permissions::ALL);
        assert!(users.authenticate(None, b"anything").is_some());
        assert!(users.authenticate(Some(b"other"), b"anything").is_none());
        assert_eq!(users.acl_list(), ["user default on nopass ~* &* +@all"]);
    }

    #[test]
    fn bad_user_tables_are_refused() {
        let user = |name: &str| UserConfig {
            name: name.into(),
            password: hash("p"),
            permissions: vec![Permission::Read],
        };
        assert!(Users::new(None, &[user("a"), user("a")]).is_err());
        assert!(Users::new(Some(&hash("p")), &[user("default")]).is_err());
        assert!(Users::new(None, &[user("has space")]).is_err());
        assert!(Users::new(None, &[user("")]).is_err());
        assert!(Users::new(Some("plain password"), &[]).is_err());
    }
}
