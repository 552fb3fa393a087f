//! The credentials file (`HEFT_CREDENTIALS_FILE`): one `[[credential]]`
//! entry per caller, with the SHA-256 of its token, never the token.
//!
//! ```toml
//! [[credential]]
//! name = "warehouse-sync"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! scopes = ["entries.read", "users.changes"]
//! ```

use std::{collections::HashSet, path::Path};

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use super::{Credential, Scopes};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    #[serde(default)]
    credential: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token_sha256: String,
    scopes: Vec<String>,
}

/// The credentials a file lists.
#[derive(Debug, Clone, Default)]
pub struct CredentialsFile(pub Vec<Credential>);

impl CredentialsFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let contents: FileContents = toml::from_str(text)?;
        let mut names = HashSet::new();
        let mut credentials = Vec::with_capacity(contents.credential.len());
        for (i, entry) in contents.credential.into_iter().enumerate() {
            let at = format!("credential {} ({:?})", i + 1, entry.name);
            if entry.name.trim().is_empty() || entry.name.len() > 64 {
                anyhow::bail!("{at}: name must be 1 to 64 characters");
            }
            if !names.insert(entry.name.clone()) {
                anyhow::bail!("{at}: the name is listed twice");
            }
            let digest = parse_sha256(&entry.token_sha256)
                .ok_or_else(|| anyhow::anyhow!("{at}: token_sha256 must be 64 hex digits"))?;
            let scopes = Scopes::parse(entry.scopes.iter().map(String::as_str))
                .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            credentials.push(Credential::new(&entry.name, digest, scopes));
        }
        Ok(Self(credentials))
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A fresh credential: its token (shown once) and the entry to add to the file.
pub struct NewCredential {
    pub token: String,
    pub entry: String,
}

impl NewCredential {
    /// 256 random bits, base64url: the token is never stored, only its hash.
    pub fn generate(name: &str, scopes: Scopes) -> anyhow::Result<Self> {
        if name.trim().is_empty() || name.len() > 64 {
            anyhow::bail!("--name must be 1 to 64 characters");
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let scopes = scopes
            .names()
            .iter()
            .map(|scope| format!("{scope:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let entry = format!(
            "[[credential]]\nname = {name:?}\ntoken_sha256 = \"{}\"\nscopes = [{scopes}]\n",
            to_hex(&Sha256::digest(token.as_bytes()))
        );
        Ok(Self { token, entry })
    }
}

/// `credentials …`, a subcommand of both service binaries.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CredentialsCommand {
    /// Print a fresh token (once: it is stored nowhere) and the entry to
    /// add to HEFT_CREDENTIALS_FILE.
    New {
        /// Who holds the credential (logs and metrics name the caller so).
        #[arg(long)]
        name: String,
        /// Comma-separated scopes (users.read, entries.write, …, or *).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
}

impl CredentialsCommand {
    pub fn run(&self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        match self {
            CredentialsCommand::New { name, scopes } => {
                let scopes =
                    Scopes::parse(scopes.iter().map(String::as_str)).map_err(anyhow::Error::msg)?;
                let new = NewCredential::generate(name, scopes)?;
                writeln!(
                    out,
                    "token (shown once; give it to {name}):\n{}\n\n\
                     add to HEFT_CREDENTIALS_FILE, then send SIGHUP to both services:\n{}",
                    new.token, new.entry
                )?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Caller, Scope, Tokens};

    #[test]
    fn a_new_credential_parses_back_and_authenticates_with_its_token() {
        let scopes = Scopes::parse(["entries.read", "users.changes"]).expect("scopes");
        let new = NewCredential::generate("warehouse-sync", scopes).expect("new");
        assert!(new.token.len() >= 43, "at least 256 bits");
        let file = CredentialsFile::parse(&new.entry).expect("the printed entry parses");
        let tokens = Tokens::default().with(file.0);
        let header = format!("Bearer {}", new.token);
        let caller = tokens
            .authenticate(Some(header.as_bytes()))
            .expect("well-formed")
            .expect("known");
        match caller {
            Caller::Credential { name, scopes } => {
                assert_eq!(&*name, "warehouse-sync");
                assert!(scopes.contains(Scope::EntriesRead));
                assert!(!scopes.contains(Scope::EntriesWrite));
            }
            other => panic!("expected a credential, got {other:?}"),
        }
    }

    #[test]
    fn a_broken_file_says_where() {
        for (text, expected) in [
            ("[[credential]]\nname = \"a\"\n", "missing field"),
            (
                "[[credential]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nscopes = []\n",
                "64 hex digits",
            ),
            (
                "[[credential]]\nname = \"a\"\ntoken_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nscopes = [\"entries.delete\"]\n",
                "unknown scope",
            ),
        ] {
            let error = CredentialsFile::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
