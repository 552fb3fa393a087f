//! Generated protobuf and gRPC code for heft's `heft.*.v1` packages.
#![forbid(unsafe_code)]

// Module nesting mirrors the proto packages: generated code refers to other
// packages by relative paths (`super::super::super::google::r#type`).
#[allow(clippy::all, unused_qualifications, missing_docs)]
pub mod google {
    pub mod r#type {
        tonic::include_proto!("google.r#type");
    }
}

#[allow(clippy::all, unused_qualifications, missing_docs)]
pub mod heft {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("heft.common.v1");
        }
    }

    pub mod users {
        pub mod v1 {
            tonic::include_proto!("heft.users.v1");
        }
    }

    pub mod entries {
        pub mod v1 {
            tonic::include_proto!("heft.entries.v1");

            /// `ErrorInfo` reasons of the entries contract that a client
            /// (the users service's cascade) acts on.
            pub mod reason {
                /// PurgeUserEntries's deadline came before its last batch:
                /// the purge made progress and the next delivery resumes it.
                pub const PURGE_INCOMPLETE: &str = "PURGE_INCOMPLETE";
                /// PurgeUserEntries for a user the users service still has:
                /// nothing was deleted.
                pub const USER_EXISTS: &str = "USER_EXISTS";
            }
        }
    }
}

pub mod codec;
pub mod status;

pub use heft::{common, entries, users};

/// Encoded `FileDescriptorSet` of every heft proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/heft_descriptor.bin"));
