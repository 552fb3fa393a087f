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

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures::{FutureExt, future::BoxFuture};
use heft_proto::{
    common::v1::Weight,
    entries::v1::{
        self as pb,
        entry_service_server::{EntryService, EntryServiceServer},
    },
    google::r#type::Date,
};
use sqlx::{Connection, PgConnection, Row as _, postgres::PgRow};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, transport::Server};
use uuid::Uuid;

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

impl BareEntries {
    async fn run<T>(
        &self,
        statement: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, Status> {
        let _turn = self.turns.acquire().await;
        let idle = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        // None once a cancelled call has dropped its connection.
        let mut connection = match idle {
            Some(connection) => connection,
            None => PgConnection::connect(&self.database_url)
                .await
                .map_err(database)?,
        };
        let result = statement(&mut connection).await.map_err(database)?;
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(connection);
        Ok(result)
    }
}

fn invalid(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is not a UUID"))
}

fn database(error: sqlx::Error) -> Status {
    Status::internal(error.to_string())
}

fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn entry(row: &PgRow) -> Result<pb::Entry, sqlx::Error> {
    let recorded_on: NaiveDate = row.try_get(4)?;
    Ok(pb::Entry {
        id: row.try_get::<Uuid, _>(0)?.to_string(),
        user_id: row.try_get::<Uuid, _>(1)?.to_string(),
        weight: Some(Weight {
            value: row.try_get(2)?,
            unit: i32::from(row.try_get::<i16, _>(3)?),
        }),
        recorded_on: Some(Date {
            year: recorded_on.year(),
            month: recorded_on.month() as i32,
            day: recorded_on.day() as i32,
        }),
        note: row.try_get(5)?,
        create_time: Some(timestamp(row.try_get(6)?)),
        update_time: Some(timestamp(row.try_get(7)?)),
    })
}

fn only_get_and_list<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the bare reference serves GetEntry and ListEntries only",
    ))
}

#[tonic::async_trait]
impl EntryService for BareEntries {
    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id: Uuid = request.get_ref().id.parse().map_err(|_| invalid("id"))?;
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
            .ok_or_else(|| Status::not_found("no such entry"))?;
        Ok(Response::new(entry(&row).map_err(database)?))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let request = request.get_ref();
        let user: Uuid = request.user_id.parse().map_err(|_| invalid("user_id"))?;
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
        let entries = rows
            .iter()
            .take(page as usize)
            .map(entry)
            .collect::<Result<_, _>>()
            .map_err(database)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries,
            next_page_token: String::new(),
        }))
    }

    async fn create_entry(
        &self,
        _: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        only_get_and_list()
    }

    async fn batch_create_entries(
        &self,
        _: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
        only_get_and_list()
    }

    async fn update_entry(
        &self,
        _: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        only_get_and_list()
    }

    async fn delete_entry(
        &self,
        _: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<()>, Status> {
        only_get_and_list()
    }

    async fn summarize_entries(
        &self,
        _: Request<pb::SummarizeEntriesRequest>,
    ) -> Result<Response<pb::SummarizeEntriesResponse>, Status> {
        only_get_and_list()
    }

    async fn purge_user_entries(
        &self,
        _: Request<pb::PurgeUserEntriesRequest>,
    ) -> Result<Response<pb::PurgeUserEntriesResponse>, Status> {
        only_get_and_list()
    }
}
