//! The client side of heft: channels to the other service, the credentials
//! and request id its calls carry, and the health check a container runs.

use std::{future::Future, net::SocketAddr, time::Duration};

use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use tracing::Instrument;

use crate::{
    auth::Secret,
    config::CommonArgs,
    peer,
    rpc_layer::{REQUEST_ID_HEADER, RequestId},
    trace,
};

/// The channel to the other service at `url` (named by the setting
/// `peer_url_variable`), once the internal token is known to travel safely.
pub fn to_peer(common: &CommonArgs, peer_url_variable: &str, url: &str) -> anyhow::Result<Channel> {
    common.check_peer(peer_url_variable, url)?;
    channel(url, common.client_tls()?, PEER_CONNECT_TIMEOUT)
}

/// A peer that does not accept a connection within this is unavailable.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connecting channel to the other service: neither service needs
/// the other to be up to start.
pub fn channel(
    url: &str,
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid service url {url:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

/// Credentials, request id and trace context of calls from one heft service to the other.
#[derive(Clone)]
pub struct InternalCredentials {
    authorization: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for InternalCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCredentials")
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

impl InternalCredentials {
    pub fn new(internal_token: Option<&Secret>) -> anyhow::Result<Self> {
        let authorization = internal_token
            .map(|token| MetadataValue::try_from(format!("Bearer {}", token.expose())))
            .transpose()
            .map_err(|_| anyhow::anyhow!("HEFT_INTERNAL_TOKEN must be printable ASCII"))?
            .map(|mut value: AsciiMetadataValue| {
                // Never indexed by HPACK, where a later header could probe it.
                value.set_sensitive(true);
                value
            });
        Ok(Self { authorization })
    }

    /// Calls `method` of `service` on the other service with `send` (the
    /// generated client's method): `message` with the internal token, the
    /// request id being followed, a deadline and the trace context, inside
    /// a client span that records the answer's code.
    pub async fn call<T, R, Fut>(
        &self,
        (service, method): (&str, &str),
        message: T,
        request_id: Option<&RequestId>,
        deadline: Duration,
        send: impl FnOnce(tonic::Request<T>) -> Fut,
    ) -> Result<R, tonic::Status>
    where
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let span = trace::client_span(service, method);
        let mut request = self.request(message, request_id, deadline);
        trace::inject(&span, request.metadata_mut());
        let answer = send(request).instrument(span.clone()).await;
        if !span.is_disabled() {
            let (code, reason) = match &answer {
                Ok(_) => (tonic::Code::Ok, None),
                Err(status) => (status.code(), peer::reason(status)),
            };
            trace::record_outcome(&span, code, reason.as_deref(), true);
        }
        answer.map(tonic::Response::into_inner)
    }

    /// Wraps `message` with the internal token, the request id being
    /// followed, and a deadline.
    fn request<T>(
        &self,
        message: T,
        request_id: Option<&RequestId>,
        deadline: Duration,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        if let Some(id) = request_id.and_then(|id| MetadataValue::try_from(id.0.as_str()).ok()) {
            request.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        request
    }
}

/// Asks the health service at `url`; true when it reports SERVING.
pub async fn healthcheck(url: &str, tls: Option<ClientTlsConfig>) -> anyhow::Result<bool> {
    let channel = channel(url, tls, Duration::from_secs(2))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(3));
    let response = client.check(request).await?;
    Ok(response.into_inner().status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

/// The http(s) URL to reach a listener at `address` from this machine.
pub fn local_url(address: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{scheme}://{host}:{}", address.port())
}

/// The `healthcheck` subcommand of a service listening on `listen`: true
/// when it reports SERVING.
pub async fn check_local_service(listen: SocketAddr, common: &CommonArgs) -> anyhow::Result<bool> {
    let url = local_url(listen, common.tls_cert.is_some());
    healthcheck(&url, common.client_tls()?).await
}
