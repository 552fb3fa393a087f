//! Settings both services read, from flags or `HEFT_*` environment variables.

use std::{path::PathBuf, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{
    auth::{CredentialsFile, Secret, Tokens},
    telemetry::LogFormat,
};

/// A database URL, which may carry a password: never printed whole.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    /// `postgres://user:***@host/db`: the password hidden, the rest kept
    /// for whoever debugs a connection.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.0;
        let redacted = url
            .find("://")
            .map(|start| start + 3)
            .and_then(|authority| {
                let at = authority + url[authority..].find('@')?;
                let colon = authority + url[authority..at].find(':')?;
                Some(format!("{}:***{}", &url[..colon], &url[at..]))
            });
        write!(f, "DatabaseUrl({:?})", redacted.as_deref().unwrap_or(url))
    }
}

/// A client that has not finished its TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// API bearer tokens, comma-separated. Unset: the service runs open (development only).
    #[arg(
        long,
        env = "HEFT_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<Secret>,

    /// Tokens the two heft services use to call each other, comma-separated:
    /// every one is accepted, the first is sent (rotation without a gap).
    #[arg(
        long,
        env = "HEFT_INTERNAL_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub internal_token: Vec<Secret>,

    /// Log filter, tracing syntax (e.g. `info,heft_users=debug`).
    #[arg(long = "log", env = "HEFT_LOG", default_value = "info")]
    pub log: String,

    /// Log line format.
    #[arg(long, env = "HEFT_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// PEM certificate chain: serve TLS instead of plaintext (with --tls-key).
    #[arg(long, env = "HEFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "HEFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate that signs the other service's certificate (for https:// URLs).
    #[arg(long, env = "HEFT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// TOML file of named, scoped credentials (`[[credential]]` name,
    /// token_sha256, scopes); re-read on SIGHUP.
    #[arg(long, env = "HEFT_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,

    /// Allow sending the internal token over http:// to a host that is not
    /// loopback (a private network only; prefer https://).
    #[arg(long, env = "HEFT_ALLOW_CLEARTEXT_PEER", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_cleartext_peer: bool,

    /// Allow running without tokens on a non-loopback address (never in production).
    #[arg(long, env = "HEFT_ALLOW_OPEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_open: bool,

    #[command(flatten)]
    pub limits: ServerLimits,

    /// How long shutdown waits for in-flight calls, in seconds.
    #[arg(long, env = "HEFT_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// How long a change token stays valid, in days; changes are kept a day longer.
    #[arg(long, env = "HEFT_CHANGES_RETENTION_DAYS", default_value_t = crate::changes::DEFAULT_RETENTION_DAYS)]
    pub changes_retention_days: u32,
}

/// How much one listener takes on; the defaults suit a 2-core machine with a
/// 16-connection database pool: a few hundred calls in flight keep both cores
/// and the pool busy, anything beyond only queues.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerLimits {
    /// Calls in flight across all connections; beyond it calls are refused at
    /// once (RESOURCE_EXHAUSTED) instead of queueing.
    #[arg(long, env = "HEFT_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// HTTP/2 streams (concurrent calls) per connection.
    #[arg(long, env = "HEFT_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval, in seconds; a peer that does not answer
    /// within 10 s is disconnected.
    #[arg(long, env = "HEFT_HTTP2_KEEPALIVE_SECS", default_value_t = 30)]
    pub http2_keepalive_secs: u64,
}

impl CommonArgs {
    /// The credentials this service accepts: `HEFT_API_TOKENS`, the
    /// credentials file and the internal tokens. A file that does not parse,
    /// or a half-configuration, is an error.
    pub fn tokens(&self) -> anyhow::Result<Tokens> {
        let mut tokens = Tokens::new(&self.api_tokens, &self.internal_token);
        if let Some(path) = &self.credentials_file {
            tokens = tokens.with(CredentialsFile::read(path)?.0);
        }
        tokens.check_complete().map_err(anyhow::Error::msg)?;
        Ok(tokens)
    }

    /// The internal token never crosses a network in cleartext: an
    /// `http://` peer must be a loopback address (judged from the URL, no
    /// lookup) unless `HEFT_ALLOW_CLEARTEXT_PEER=true`; and a CA with an
    /// `http://` URL means TLS was meant but not configured.
    pub fn check_peer(&self, peer_url_variable: &str, url: &str) -> anyhow::Result<()> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("{peer_url_variable}={url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Ok(());
        }
        if self.tls_ca.is_some() {
            anyhow::bail!(
                "HEFT_TLS_CA is set but {peer_url_variable} is http://: use https:// \
                 (TLS was meant, plaintext configured)"
            );
        }
        let host = uri.host().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && self.outgoing_internal_token().is_some() && !self.allow_cleartext_peer {
            anyhow::bail!(
                "refusing to send the internal token in cleartext to {host}: set \
                 {peer_url_variable} to an https:// URL (with HEFT_TLS_CA), or \
                 HEFT_ALLOW_CLEARTEXT_PEER=true on a private network"
            );
        }
        Ok(())
    }

    /// Protected mode, like Redis's: a service without tokens listens only
    /// on loopback unless `HEFT_ALLOW_OPEN=true`.
    pub fn check_exposure(
        &self,
        tokens: &Tokens,
        listen: std::net::SocketAddr,
    ) -> anyhow::Result<()> {
        if tokens.is_open() && !listen.ip().is_loopback() && !self.allow_open {
            anyhow::bail!(
                "refusing to listen on {listen} without tokens: set HEFT_API_TOKENS and \
                 HEFT_INTERNAL_TOKEN, listen on a loopback address, or set HEFT_ALLOW_OPEN=true \
                 (development only)"
            );
        }
        Ok(())
    }

    /// The internal token this service presents to the other one: the first.
    pub fn outgoing_internal_token(&self) -> Option<&Secret> {
        self.internal_token
            .iter()
            .find(|token| !token.expose().trim().is_empty())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn server_tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        Ok(Some(
            ServerTlsConfig::new()
                .identity(identity)
                .timeout(TLS_HANDSHAKE_TIMEOUT),
        ))
    }

    pub fn client_tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        Ok(Some(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
        ))
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(args: &[&str]) -> CommonArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
        }
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("args")
            .common
    }

    #[test]
    fn the_internal_token_never_goes_in_cleartext_off_the_machine() {
        let with_token = common(&["--internal-token", "internal"]);
        for loopback in [
            "http://127.0.0.1:50052",
            "http://localhost:50052",
            "http://[::1]:50052",
        ] {
            assert!(
                with_token.check_peer("HEFT_ENTRIES_URL", loopback).is_ok(),
                "{loopback}"
            );
        }
        assert!(
            with_token
                .check_peer("HEFT_ENTRIES_URL", "https://entries:50052")
                .is_ok()
        );
        let error = with_token
            .check_peer("HEFT_ENTRIES_URL", "http://entries:50052")
            .expect_err("cleartext to another host");
        assert!(
            error.to_string().contains("HEFT_ALLOW_CLEARTEXT_PEER"),
            "{error}"
        );
        let allowed = common(&[
            "--internal-token",
            "internal",
            "--allow-cleartext-peer",
            "true",
        ]);
        assert!(
            allowed
                .check_peer("HEFT_ENTRIES_URL", "http://entries:50052")
                .is_ok()
        );
        // Open mode has no token to leak.
        assert!(
            common(&[])
                .check_peer("HEFT_ENTRIES_URL", "http://entries:50052")
                .is_ok()
        );

        let ca_with_http = common(&["--tls-ca", "/dev/null"]);
        let error = ca_with_http
            .check_peer("HEFT_USERS_URL", "http://127.0.0.1:50051")
            .expect_err("a CA with http://");
        assert!(error.to_string().contains("HEFT_TLS_CA"), "{error}");
    }

    #[test]
    fn database_urls_never_print_their_password() {
        let url: DatabaseUrl = "postgres://heft:s3cret@db:5432/heft_users"
            .parse()
            .expect("url");
        let printed = format!("{url:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("postgres://heft:***@db:5432/heft_users"),
            "{printed}"
        );
        let plain: DatabaseUrl = "sqlite://data/users.db".parse().expect("url");
        assert!(format!("{plain:?}").contains("sqlite://data/users.db"));
    }
}
