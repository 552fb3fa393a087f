//! TLS by configuration: both listeners and both directions of the calls
//! between the services, with certificates from a test CA.

mod common;

use std::{net::SocketAddr, path::PathBuf};

use common::Stack;
use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1::{CreateEntryRequest, entry_service_client::EntryServiceClient},
    google::r#type::Date,
    users::v1::{
        CreateUserRequest, DeleteUserRequest, PurgeState, user_service_client::UserServiceClient,
    },
};
use heft_test_support::TestDatabase;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_pem: String,
}

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost.
fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("cert");

    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
        ca_pem: ca_cert.pem(),
        _dir: dir,
    }
}

async fn tls_channel(addr: SocketAddr, ca_pem: &str) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .expect("tls config")
        .connect()
        .await
        .expect("tls connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_serve_and_call_each_other_over_tls() {
    let pki = pki();
    let mut stack = Stack::new(TestDatabase::sqlite()).await.without_tokens();
    for spec in [&mut stack.users_spec, &mut stack.entries_spec] {
        spec.peer_url = spec.peer_url.replacen("http://", "https://", 1);
        spec.extra_args = vec![
            "--tls-cert".to_owned(),
            pki.cert.display().to_string(),
            "--tls-key".to_owned(),
            pki.key.display().to_string(),
            "--tls-ca".to_owned(),
            pki.ca.display().to_string(),
        ];
    }
    let (_users, _entries) = stack.spawn().await;
    let (users_addr, entries_addr) = (stack.users_spec.listen, stack.entries_spec.listen);

    let mut users = UserServiceClient::new(tls_channel(users_addr, &pki.ca_pem).await);
    let mut entries = EntryServiceClient::new(tls_channel(entries_addr, &pki.ca_pem).await);
    let user = users
        .create_user(CreateUserRequest {
            email: "tls@example.com".into(),
            name: "Tls".into(),
            password: "correct horse".into(),
            weight_unit: 0,
        })
        .await
        .expect("create user over tls")
        .into_inner();
    // entries -> users over TLS: the user must exist.
    entries
        .create_entry(CreateEntryRequest {
            user_id: user.id.clone(),
            weight: Some(Weight {
                value: 80.0,
                unit: WeightUnit::Kilograms as i32,
            }),
            recorded_on: Some(Date {
                year: 2024,
                month: 1,
                day: 1,
            }),
            note: String::new(),
            request_id: String::new(),
        })
        .await
        .expect("create entry over tls");
    // users -> entries over TLS: the cascade.
    let deleted = users
        .delete_user(DeleteUserRequest { id: user.id })
        .await
        .expect("delete over tls")
        .into_inner();
    assert_eq!(
        (deleted.purge_state, deleted.purged_entry_count),
        (PurgeState::Purged as i32, 1)
    );

    // Plaintext is not spoken on a TLS listener.
    let mut plaintext = UserServiceClient::new(
        Channel::from_shared(format!("http://{users_addr}"))
            .expect("url")
            .connect_lazy(),
    );
    assert!(
        plaintext
            .list_users(heft_proto::users::v1::ListUsersRequest::default())
            .await
            .is_err()
    );
}
