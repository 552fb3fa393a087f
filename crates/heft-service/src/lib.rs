//! Plumbing both heft services share: configuration, telemetry, bearer-token
//! auth, the error-to-status mapping, the database handle, page tokens, the
//! service host (serving and shutdown) and the client of the other service.
#![forbid(unsafe_code)]

pub mod auth;
pub mod changes;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod field_mask;
pub mod host;
pub mod keyed;
pub mod message_limit;
pub mod metrics;
pub mod pagination;
pub mod peer;
pub mod recent;
pub mod rpc_layer;
pub mod telemetry;
pub mod time;
pub mod trace;
pub mod units;
pub mod user_token;

pub use auth::{Caller, Secret, Tokens};
pub use error::{ErrorCode, FieldViolation, InvalidRequest, ServiceError, Violations, to_status};
pub use rpc_layer::{RequestId, caller, request_id};
