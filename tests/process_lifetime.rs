//! Executors get a parent-death signal (`PR_SET_PDEATHSIG`), which Linux delivers when the
//! *thread* that forked them exits. zwarm's threads come and go (tokio retires worker threads
//! after `block_in_place`), so executors are forked from one dedicated thread: the signal must
//! mean "zwarm died", never "some thread was retired".
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::time::Duration;

use zwarm::process::{ProcessSpec, pid_alive, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_outlives_the_thread_that_asked_for_it() {
    let spec = ProcessSpec {
        program: "sleep".into(),
        args: vec!["30".into()],
        cwd: "/".into(),
        env_set: vec![],
        env_remove: vec![],
    };
    let handle = tokio::runtime::Handle::current();
    // Ask for the process from a thread that exits right afterwards.
    let mut child = std::thread::spawn(move || handle.block_on(spawn(&spec, "lifetime-test")))
        .join()
        .expect("thread")
        .expect("spawn");
    let pid = child.id().expect("pid") as i32;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = pid_alive(pid);
    let _ = child.start_kill();
    let _ = child.wait().await;
    assert!(alive, "the executor died with the thread that started it");
}
