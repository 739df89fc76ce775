//! The tokens file: who may call, parsed and validated whole, and the lookups.
//!
//! ```toml
//! [[token]]
//! name = "billing"
//! roles = ["emitter"]
//! events = ["clients.*", "accounts.create"]   # optional; empty/absent = all events
//! sha256 = "<lowercase hex SHA-256 of the token>"
//!
//! [[certificate]]            # mTLS identities: a client certificate's CN or DNS SAN
//! name = "crm-sync"
//! subject = "crm-sync.internal"
//! roles = ["reader"]
//! events = []
//! ```
//!
//! The file holds SHA-256 digests, never tokens. A presented token is hashed and
//! compared with every digest in constant time (no early exit, no short-circuit), so
//! timing says nothing about how close a guess was. `provisiond token new` makes a
//! token and its entry ([`new_token`], [`token_entry`]).

use std::collections::HashSet;
use std::path::Path;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{valid_pattern, Caller, Role};

/// Prefix of the tokens `provisiond token new` makes (recognisable in leaked text).
pub const TOKEN_PREFIX: &str = "pvt_";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    roles: Vec<Role>,
    #[serde(default)]
    events: Vec<String>,
    sha256: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    name: String,
    subject: String,
    roles: Vec<Role>,
    #[serde(default)]
    events: Vec<String>,
}

/// The validated identities of one tokens file.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    tokens: Vec<([u8; 32], Caller)>,
    certificates: Vec<(String, Caller)>,
}

/// Why a tokens file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum IdentitiesError {
    /// It could not be read.
    #[error("reading tokens file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It is not a valid tokens file.
    #[error("tokens file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the entry.
        message: String,
    },
}

impl Identities {
    /// Reads and validates the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Identities, IdentitiesError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentitiesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Identities::parse(&text).map_err(|message| IdentitiesError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates tokens-file text; the error names the bad entry.
    pub fn parse(text: &str) -> Result<Identities, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut names = HashSet::new();
        let mut identities = Identities::default();
        for (index, entry) in file.token.into_iter().enumerate() {
            let at = format!("token[{index}] ({:?})", entry.name);
            let caller = caller(&at, entry.name, entry.roles, entry.events, &mut names)?;
            let digest = parse_digest(&entry.sha256)
                .ok_or_else(|| format!("{at}: sha256 must be 64 lowercase hex digits"))?;
            if identities.tokens.iter().any(|(d, _)| *d == digest) {
                return Err(format!("{at}: the same sha256 appears twice"));
            }
            identities.tokens.push((digest, caller));
        }
        for (index, entry) in file.certificate.into_iter().enumerate() {
            let at = format!("certificate[{index}] ({:?})", entry.name);
            if entry.subject.trim().is_empty() {
                return Err(format!("{at}: subject must not be empty"));
            }
            let caller = caller(&at, entry.name, entry.roles, entry.events, &mut names)?;
            identities.certificates.push((entry.subject, caller));
        }
        Ok(identities)
    }

    /// The caller holding `token`. Every digest is compared, in constant time.
    pub fn by_token(&self, token: &str) -> Option<&Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (candidate, caller) in &self.tokens {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found
    }

    /// The caller of the first `[[certificate]]` entry whose subject is one of
    /// `subjects` (a certificate's CN and DNS SANs), in file order.
    pub fn by_subjects(&self, subjects: &[String]) -> Option<&Caller> {
        self.certificates
            .iter()
            .find(|(subject, _)| subjects.iter().any(|s| s.eq_ignore_ascii_case(subject)))
            .map(|(_, caller)| caller)
    }

    /// How many token and certificate entries it holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.tokens.len(), self.certificates.len())
    }
}

fn caller(
    at: &str,
    name: String,
    roles: Vec<Role>,
    events: Vec<String>,
    names: &mut HashSet<String>,
) -> Result<Caller, String> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(format!(
            "{at}: name must be 1 to 200 characters without control characters"
        ));
    }
    if !names.insert(name.clone()) {
        return Err(format!("{at}: the name is used by another entry"));
    }
    if roles.is_empty() {
        return Err(format!(
            "{at}: roles must name at least one of admin, emitter, reader"
        ));
    }
    if let Some(bad) = events.iter().find(|p| !valid_pattern(p)) {
        return Err(format!(
            "{at}: event pattern {bad:?} is not `group.action`, `group.*` or `*`"
        ));
    }
    let mut roles = roles;
    roles.sort();
    roles.dedup();
    Ok(Caller {
        name,
        roles,
        event_patterns: events,
    })
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// Lowercase hex SHA-256 of `token`, as the tokens file stores it.
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh token: `pvt_` and 32 random bytes in unpadded base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A fresh token and its validated `[[token]]` entry (what `provisiond token new`
/// prints); the error says which value the tokens file would refuse.
pub fn new_token_entry(
    name: &str,
    roles: &[Role],
    events: &[String],
) -> Result<(String, String), String> {
    let token = new_token();
    let entry = token_entry(name, roles, events, &token);
    Identities::parse(&entry)?;
    Ok((token, entry))
}

/// The `[[token]]` entry of `token` (preceded by an empty line, so appending it keeps
/// entries apart), ending with a newline.
pub fn token_entry(name: &str, roles: &[Role], events: &[String], token: &str) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let list = |items: Vec<String>| {
        format!(
            "[{}]",
            items
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "\n[[token]]\nname = {}\nroles = {}\nevents = {}\nsha256 = \"{}\"\n",
        quote(name),
        list(roles.iter().map(|r| r.as_str().to_owned()).collect()),
        list(events.to_vec()),
        sha256_hex(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_entry_parses_back_to_its_caller() {
        let token = new_token();
        assert!(
            token.starts_with("pvt_") && token.len() == 4 + 43,
            "{token}"
        );
        assert_ne!(token, new_token());
        let entry = token_entry(
            "bill\"ing",
            &[Role::Emitter, Role::Reader],
            &["clients.*".into()],
            &token,
        );
        let identities = Identities::parse(&entry).unwrap();
        let caller = identities.by_token(&token).unwrap();
        assert_eq!(caller.name, "bill\"ing");
        assert_eq!(caller.roles, [Role::Emitter, Role::Reader]);
        assert_eq!(caller.event_patterns, ["clients.*"]);
        assert!(identities.by_token("pvt_other").is_none());
        assert!(!entry.contains(&token));
    }

    #[test]
    fn the_documented_format_parses() {
        let text = format!(
            r#"
[[token]]
name = "billing"
roles = ["emitter"]
events = ["clients.*", "accounts.create"]   # optional
sha256 = "{}"

[[certificate]]
name = "crm-sync"
subject = "crm-sync.internal"
roles = ["reader"]
events = []
"#,
            sha256_hex("t")
        );
        let identities = Identities::parse(&text).unwrap();
        assert_eq!(identities.counts(), (1, 1));
        let crm = identities
            .by_subjects(&["CRM-sync.internal".into()])
            .unwrap();
        assert_eq!(
            (crm.name.as_str(), crm.roles.as_slice()),
            ("crm-sync", &[Role::Reader][..])
        );
        assert!(identities.by_subjects(&["x".into()]).is_none());
        assert_eq!(Identities::parse("").unwrap().counts(), (0, 0));
    }

    #[test]
    fn bad_entries_are_refused_naming_the_entry() {
        let digest = sha256_hex("t");
        for (text, expected) in [
            (format!("[[token]]\nname = \"a\"\nroles = []\nsha256 = \"{digest}\""), "token[0] (\"a\"): roles"),
            (format!("[[token]]\nname = \"a\"\nroles = [\"root\"]\nsha256 = \"{digest}\""), "unknown variant"),
            ("[[token]]\nname = \"a\"\nroles = [\"admin\"]\nsha256 = \"ABC\"".to_owned(), "sha256 must be"),
            (format!("[[token]]\nname = \"a\"\nroles = [\"admin\"]\nsha256 = \"{digest}\"\nevents = [\"x*\"]"), "event pattern"),
            (format!("[[token]]\nname = \"a\"\nroles = [\"admin\"]\nsha256 = \"{digest}\"\n[[token]]\nname = \"a\"\nroles = [\"admin\"]\nsha256 = \"{}\"", sha256_hex("u")), "token[1] (\"a\"): the name"),
            (format!("[[token]]\nname = \"a\"\nroles = [\"admin\"]\nsha256 = \"{digest}\"\ntoken = \"x\""), "unknown field"),
            ("[[certificate]]\nname = \"c\"\nsubject = \"\"\nroles = [\"reader\"]".to_owned(), "subject must not be empty"),
        ] {
            let err = Identities::parse(&text).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
    }
}
