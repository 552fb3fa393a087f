//! The least a gRPC service over the entries table can do, for scale: tonic
//! with no layers (no token, request id, metrics, deadline or load
//! shedding), one pooled sqlx statement per call, the rows turned into
//! protobuf. Its connections wait in a plain stack, without the checks of
//! sqlx's pool (as heft's warm connections do). heft-bench runs it as a process of its own
//! (`heft-bench --serve-bare`) on heft-entries' database, so that beside
//! heft's ratio the report shows what the architecture itself costs.
//!
//! It serves GetEntry and ListEntries (first pages, no token); every other
//! method answers UNIMPLEMENTED.

use std::{net::SocketAddr, sync::Mutex};

use futures::{FutureExt, future::BoxFuture};
use heft_proto::{
    common::v1::Weight,
    entries::v1::{
        self as pb,
        entry_service_server::{EntryService, EntryServiceServer},
    },
};
use heft_service::time::to_timestamp;
use sqlx::{Connection, PgConnection, Row as _, postgres::PgRow};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, transport::Server};
use uuid::Uuid;

use heft_service::time::date_to_proto;

/// Statements at once, each on a connection of its own.
const CONNECTIONS: usize = 16;

pub async fn serve(database_url: &str, listen: SocketAddr) -> anyhow::Result<()> {
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(PgConnection::connect(database_url).await?);
    }
    let entries = BareEntries {
        database_url: database_url.to_owned(),
        connections: Mutex::new(connections),
        turns: Semaphore::new(CONNECTIONS),
    };
    Server::builder()
        .add_service(EntryServiceServer::new(entries))
        .serve(listen)
        .await?;
    Ok(())
}

struct BareEntries {
    database_url: String,
    connections: Mutex<Vec<PgConnection>>,
    turns: Semaphore,
}

/// Why a call failed, as the status it answers with.
enum Failure {
    NotUuid(&'static str),
    NotFound,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NotUuid(field) => Status::invalid_argument(format!("{field} is not a UUID")),
            Failure::NotFound => Status::not_found("no such entry"),
            Failure::Database(error) => Status::internal(error.to_string()),
        }
    }
}

fn uuid(field: &'static str, text: &str) -> Result<Uuid, Failure> {
    text.parse().map_err(|_| Failure::NotUuid(field))
}

impl BareEntries {
    async fn run<T>(
        &self,
        statement: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, Failure> {
        let _turn = self.turns.acquire().await;
        let idle = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        // None once a cancelled call has dropped its connection.
        let mut connection = match idle {
            Some(connection) => connection,
            None => PgConnection::connect(&self.database_url).await?,
        };
        let result = statement(&mut connection).await?;
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(connection);
        Ok(result)
    }

    async fn get(&self, request: &pb::GetEntryRequest) -> Result<pb::Entry, Failure> {
        let id = uuid("id", &request.id)?;
        let row = self
            .run(move |connection| {
                sqlx::query(
                    "SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time
                     FROM entries WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(connection)
                .boxed()
            })
            .await?
            .ok_or(Failure::NotFound)?;
        Ok(entry(&row)?)
    }

    async fn list(
        &self,
        request: &pb::ListEntriesRequest,
    ) -> Result<pb::ListEntriesResponse, Failure> {
        let user = uuid("user_id", &request.user_id)?;
        let page = request.page_size.clamp(1, 1000);
        // The limit written into the statement, as heft-entries does.
        let select = sqlx::AssertSqlSafe(format!(
            "SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time
             FROM entries WHERE user_id = $1
             ORDER BY recorded_on, create_time, id LIMIT {}",
            page + 1
        ));
        let rows = self
            .run(move |connection| sqlx::query(select).bind(user).fetch_all(connection).boxed())
            .await?;
        Ok(pb::ListEntriesResponse {
            entries: rows
                .iter()
                .take(page as usize)
                .map(entry)
                .collect::<Result<_, _>>()?,
            next_page_token: String::new(),
        })
    }
}

fn entry(row: &PgRow) -> Result<pb::Entry, sqlx::Error> {
    Ok(pb::Entry {
        id: row.try_get::<Uuid, _>(0)?.to_string(),
        user_id: row.try_get::<Uuid, _>(1)?.to_string(),
        weight: Some(Weight {
            value: row.try_get(2)?,
            unit: i32::from(row.try_get::<i16, _>(3)?),
        }),
        recorded_on: Some(date_to_proto(row.try_get(4)?)),
        note: row.try_get(5)?,
        create_time: Some(to_timestamp(row.try_get(6)?)),
        update_time: Some(to_timestamp(row.try_get(7)?)),
    })
}

/// The service: GetEntry and ListEntries, and every other method of the
/// trait answering UNIMPLEMENTED.
macro_rules! serve_get_and_list_only {
    ($($method:ident($request:ident) -> $response:ty;)*) => {
        #[tonic::async_trait]
        impl EntryService for BareEntries {
            async fn get_entry(
                &self,
                request: Request<pb::GetEntryRequest>,
            ) -> Result<Response<pb::Entry>, Status> {
                Ok(Response::new(self.get(request.get_ref()).await?))
            }

            async fn list_entries(
                &self,
                request: Request<pb::ListEntriesRequest>,
            ) -> Result<Response<pb::ListEntriesResponse>, Status> {
                Ok(Response::new(self.list(request.get_ref()).await?))
            }

            $(
                async fn $method(
                    &self,
                    _: Request<pb::$request>,
                ) -> Result<Response<$response>, Status> {
                    Err(Status::unimplemented(
                        "the bare reference serves GetEntry and ListEntries only",
                    ))
                }
            )*
        }
    };
}

serve_get_and_list_only! {
    create_entry(CreateEntryRequest) -> pb::Entry;
    batch_create_entries(BatchCreateEntriesRequest) -> pb::BatchCreateEntriesResponse;
    update_entry(UpdateEntryRequest) -> pb::Entry;
    delete_entry(DeleteEntryRequest) -> ();
    summarize_entries(SummarizeEntriesRequest) -> pb::SummarizeEntriesResponse;
    purge_user_entries(PurgeUserEntriesRequest) -> pb::PurgeUserEntriesResponse;
    list_entry_changes(ListEntryChangesRequest) -> pb::ListEntryChangesResponse;
}
