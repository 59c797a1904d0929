//! A Ctrl-C that arrives between two polls of the supervision loop still stops the child.
//! Its own test binary: the signal flag is process-wide, and other tests must not see it.

use std::path::Path;
use std::time::Duration;

use orchestrator::interrupt;
use orchestrator::l0_child::{Incoming, Interruption, run_l0};

#[tokio::test]
async fn a_ctrl_c_between_two_polls_still_stops_the_child_and_exits_130() {
    interrupt::install();
    // A child that says one line, then would run for ten minutes.
    let args = ["-c", r#"echo '{"event":"console","text":"up"}'; exec sleep 600"#].map(String::from);
    let mut raised = false;
    let run = run_l0(Path::new("/bin/sh"), &args, Duration::from_secs(600), |i| {
        // The controlled moment: inside the loop's handling of a line, after one poll and
        // before the next, where a listener made afresh each pass would miss it.
        if !raised && matches!(i, Incoming::Event(_)) {
            raised = true;
            // SAFETY: raise() sends SIGINT to this process, whose handler `install` set.
            assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        }
    })
    .await
    .expect("the child ran");
    assert!(raised, "the child's line reached the loop: {run:?}");
    assert_eq!(run.interrupted, Some(Interruption::Interrupted), "{run:?}");
    assert_eq!(run.signal, Some(libc::SIGKILL), "the child was stopped: {run:?}");
    assert_eq!(run.console().collect::<Vec<_>>(), ["up"], "what it said before is kept");
    assert_eq!(interrupt::exit_status(), Some(130));
}
