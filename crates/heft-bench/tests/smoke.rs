//! The benchmark builds and runs: one quick pass over every phase. Its
//! numbers mean nothing here (debug build, one-second phases); timing
//! belongs to the benchmark itself, never to a test.

#[test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
fn a_quick_run_completes_every_phase() {
    let postgres = std::env::var("HEFT_TEST_POSTGRES_URL")
        .expect("HEFT_TEST_POSTGRES_URL names the PostgreSQL server");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_heft-bench"))
        .args(["--quick", "--postgres-url", &postgres])
        .output()
        .expect("run heft-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for measure in [
        "| GetEntry |",
        "| ListEntries (page of 100) |",
        "| CreateEntry |",
        "| BatchCreateEntries (1,000 each) |",
        "| Authenticate |",
        "| GetUser p99 under full login load |",
        "| ListEntries (page of 100), users imported just before, one heavy |",
        "| GetUser p99 beside the login overload |",
        "| purge 500 entries: DeleteUser to PURGED |",
        "| heft-users resident memory |",
        "| GetEntry on a bare tonic + sqlx server (for scale) |",
        "| ListEntries on a bare tonic + sqlx server (for scale) |",
        "| call | heft: client | service | PostgreSQL |",
    ] {
        assert!(stdout.contains(measure), "no {measure} row:\n{stdout}");
    }
    // Every count of errors, heft's, the floor's and the bare server's, is 0.
    let counts: Vec<&str> = stdout
        .split(" errors")
        .filter_map(|before| before.rsplit(' ').next())
        .collect();
    assert!(counts.len() > 1, "{stdout}");
    assert!(
        counts[..counts.len() - 1].iter().all(|count| *count == "0"),
        "{stdout}"
    );
}
