//! The generated clients of both services, and the data seeded through them.

use std::net::SocketAddr;

use futures::StreamExt as _;
use heft_proto::{
    entries::v1::{self as entries_pb, entry_service_client::EntryServiceClient},
    users::v1::{self as users_pb, user_service_client::UserServiceClient},
};
use rand::Rng;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use uuid::Uuid;

use crate::{
    cli::Args,
    sample::{KG, PASSWORD, new_entry},
    stack::{API_TOKEN, Stack},
};

/// The generated clients over a few shared connections, with the token.
#[derive(Clone)]
pub struct Clients {
    users: Vec<UserServiceClient<Channel>>,
    entries: Vec<EntryServiceClient<Channel>>,
    token: MetadataValue<Ascii>,
}

async fn entry_clients(
    addr: SocketAddr,
    connections: usize,
) -> anyhow::Result<Vec<EntryServiceClient<Channel>>> {
    Ok(Stack::channels(addr, connections)
        .await?
        .into_iter()
        .map(EntryServiceClient::new)
        .collect())
}

impl Clients {
    pub async fn connect(stack: &Stack, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            users: Stack::channels(stack.users.addr, connections)
                .await?
                .into_iter()
                .map(UserServiceClient::new)
                .collect(),
            entries: entry_clients(stack.entries.addr, connections).await?,
            token: format!("Bearer {API_TOKEN}").parse()?,
        })
    }

    /// Clients of the bare reference server, which serves entries only.
    pub async fn of_bare(&self, addr: SocketAddr, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            users: Vec::new(),
            entries: entry_clients(addr, connections).await?,
            token: self.token.clone(),
        })
    }

    /// The same connections, calling with another bearer token.
    pub fn with_token(&self, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            token: format!("Bearer {token}").parse()?,
            ..self.clone()
        })
    }

    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        request
    }

    pub fn users(&self, worker: usize) -> UserServiceClient<Channel> {
        self.users[worker % self.users.len()].clone()
    }

    pub fn entries(&self, worker: usize) -> EntryServiceClient<Channel> {
        self.entries[worker % self.entries.len()]
            .clone()
            .max_decoding_message_size(heft_proto::codec::MAX_BATCH_MESSAGE_BYTES)
            .max_encoding_message_size(heft_proto::codec::MAX_BATCH_MESSAGE_BYTES)
    }

    /// A new user: (id, email).
    pub async fn create_user(&self, worker: usize) -> anyhow::Result<(String, String)> {
        let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
        let user = self
            .users(worker)
            .create_user(self.request(users_pb::CreateUserRequest {
                email: email.clone(),
                name: "Bench".into(),
                password: PASSWORD.into(),
                weight_unit: KG,
            }))
            .await?
            .into_inner();
        Ok((user.id, email))
    }

    /// Imports `count` entries for `user` in batches of 10,000; returns their ids.
    pub async fn import(
        &self,
        worker: usize,
        user: &str,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(count);
        let mut done = 0;
        while done < count {
            let size = (count - done).min(10_000);
            let response = self
                .entries(worker)
                .batch_create_entries(self.request(entries_pb::BatchCreateEntriesRequest {
                    user_id: user.to_owned(),
                    entries: (done..done + size).map(new_entry).collect(),
                }))
                .await?
                .into_inner();
            ids.extend(response.entries.into_iter().map(|e| e.id));
            done += size;
        }
        Ok(ids)
    }
}

/// What the seeding left: users (with their emails) and every entry id.
pub struct Seeded {
    pub users: Vec<(String, String)>,
    pub entry_ids: Vec<String>,
}

impl Seeded {
    /// `args.entries` entries spread over `args.users` users, through the API.
    pub async fn through(clients: &Clients, args: &Args) -> anyhow::Result<Self> {
        let per_user = args.entries / args.users.max(1);
        let tasks: Vec<_> = (0..args.users)
            .map(|i| {
                let clients = clients.clone();
                async move {
                    let (user, email) = clients.create_user(i).await?;
                    let ids = clients.import(i, &user, per_user).await?;
                    Ok::<_, anyhow::Error>(((user, email), ids))
                }
            })
            .collect();
        let mut seeded = Self {
            users: Vec::new(),
            entry_ids: Vec::new(),
        };
        // Four importers at once keep the database busy without starving it.
        let mut results = futures::stream::iter(tasks).buffer_unordered(4);
        while let Some(result) = results.next().await {
            let (user, ids) = result?;
            seeded.users.push(user);
            seeded.entry_ids.extend(ids);
        }
        Ok(seeded)
    }

    pub fn any_entry(&self) -> &str {
        &self.entry_ids[rand::thread_rng().gen_range(0..self.entry_ids.len())]
    }

    /// A seeded user: (id, email).
    pub fn any_user(&self) -> &(String, String) {
        &self.users[rand::thread_rng().gen_range(0..self.users.len())]
    }

    /// The seeded user of `worker`, the same one on every call.
    pub fn user_of(&self, worker: usize) -> &(String, String) {
        &self.users[worker % self.users.len()]
    }
}
