#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

// A list page allocates and frees hundreds of small strings; glibc's malloc
// spent a tenth of heft-entries' CPU doing so (docs/profiles/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    heft_users::main(heft_users::Cli::parse()).await
}
