//! Test harness pieces shared by heft's test suites: fresh databases
//! ([`TestDatabase`], [`backend_tests!`]), the services started as their
//! binaries start them ([`spawn`]), and assertions on the statuses they
//! answer with ([`status`]), and an OTLP receiver for their traces ([`otlp`]).
#![forbid(unsafe_code)]

mod database;
pub mod otlp;
mod reflection;
mod service;
pub mod status;

pub use database::{Backend, POSTGRES_URL_VAR, Snapshot, TestDatabase, admin_sql, postgres_url};
pub use reflection::assert_reflection_serves_exactly;
pub use service::{RunningService, Service, free_port, spawn, spawn_on};

/// Declares one `#[tokio::test]` per backend for an `async fn(TestDatabase)`:
/// `backend_tests!(my_test);` makes `my_test::sqlite` and `my_test::postgres`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::TestDatabase::sqlite()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
                async fn postgres() {
                    super::$name($crate::TestDatabase::postgres().await).await;
                }
            }
        )*
    };
}
