//! Real child processes under /bin/sh: outcomes, the log, timeouts that leave
//! nothing behind, and start scripts that leave a daemon behind.

use std::fs;
use std::path::Path;

use pretty_assertions::assert_eq;

use super::*;

/// A run of `sh -c SCRIPT` with its log in `dir`. Going through `sh` (rather
/// than exec'ing a freshly written file) avoids ETXTBSY when another test
/// thread forks while the file is still open for writing.
fn sh(dir: &Path, script: &str) -> ScriptRun {
    ScriptRun {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        cwd: dir.to_path_buf(),
        timeout: Duration::from_secs(10),
        stop_grace: Duration::from_secs(5),
        log: dir.join("module.log"),
        label: "web start_prim".into(),
    }
}

fn log_lines(run: &ScriptRun) -> Vec<String> {
    fs::read_to_string(&run.log)
        .unwrap()
        .lines()
        .map(|l| {
            // Drop the timestamp: "2026-…Z web start_prim: text" → "web start_prim: text".
            let (time, rest) = l.split_once(' ').unwrap();
            assert_eq!(time.len(), "2026-12-06T10:11:12.345Z".len(), "{l}");
            rest.to_owned()
        })
        .collect()
}

/// Output lines of the script (without the started/ended lines `run` adds).
fn output_lines(run: &ScriptRun) -> Vec<String> {
    let lines = log_lines(run);
    lines[1..lines.len() - 1].to_vec()
}

fn read_pid(path: &Path) -> i32 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that ends the command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// Waits for `cond` up to `deadline`, failing with `what`.
fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ok_and_its_output_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = sh(
        dir.path(),
        "echo \"hello $1 $GREETING from $(pwd)\"; echo oops >&2; printf 'no newline'",
    );
    run.args.extend(["sh".into(), "world".into()]);
    run.env.push(("GREETING".into(), "hi".into()));
    assert_eq!(super::run(&run), ScriptOutcome::Ok);
    let cwd = dir.path().display();
    assert_eq!(
        output_lines(&run),
        vec![
            format!("web start_prim: hello world hi from {cwd}"),
            "web start_prim: oops".to_owned(),
            "web start_prim: no newline".to_owned(),
        ]
    );
    let lines = log_lines(&run);
    assert!(
        lines[0].starts_with("web start_prim: starting /bin/sh -c "),
        "{lines:?}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("web start_prim: exit 0 after "),
        "{lines:?}"
    );
}

#[test]
fn log_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let run = sh(dir.path(), "echo one");
    fs::write(&run.log, "earlier line\n").unwrap();
    assert_eq!(super::run(&run), ScriptOutcome::Ok);
    let text = fs::read_to_string(&run.log).unwrap();
    assert!(text.starts_with("earlier line\n"), "{text}");
    assert!(text.contains("web start_prim: one\n"), "{text}");
}

#[test]
fn exit_3_is_a_failure_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let run = sh(dir.path(), "exit 3");
    assert_eq!(
        super::run(&run),
        ScriptOutcome::Failed {
            code: Some(3),
            signal: None
        }
    );
    assert!(log_lines(&run).last().unwrap().contains("exit 3 after"));
}

#[test]
fn a_signal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let run = sh(dir.path(), "kill -USR1 $$");
    assert_eq!(
        super::run(&run),
        ScriptOutcome::Failed {
            code: None,
            signal: Some(libc::SIGUSR1)
        }
    );
}

#[test]
fn timeout_terminates_the_script_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut run = sh(
        dir.path(),
        &format!(
            "echo $$ > {0}; sleep 30 & echo $! >> {0}; wait",
            pids.display()
        ),
    );
    run.timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(super::run(&run), ScriptOutcome::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = fs::read_to_string(&pids).unwrap();
    let pids: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{text}");
    for pid in pids {
        wait_until(
            Duration::from_secs(5),
            &format!("pid {pid} to be gone"),
            || !alive(pid),
        );
    }
    assert!(log_lines(&run)
        .iter()
        .any(|l| l.contains("timed out after 300 ms: SIGTERM")));
}

#[test]
fn a_script_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut run = sh(
        dir.path(),
        &format!(
            "trap '' TERM; echo $$ > {}; while :; do sleep 1; done",
            pidfile.display()
        ),
    );
    run.timeout = Duration::from_millis(200);
    run.stop_grace = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(super::run(&run), ScriptOutcome::TimedOut);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let pid = read_pid(&pidfile);
    wait_until(Duration::from_secs(5), "the script to be gone", || {
        !alive(pid)
    });
    assert!(log_lines(&run)
        .iter()
        .any(|l| l.contains("still running 300 ms after SIGTERM: SIGKILL")));
}

#[test]
fn a_daemon_left_behind_survives_and_does_not_hold_run() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    // The background sleep keeps the script's stdout open for 30 s.
    let run = sh(
        dir.path(),
        &format!("sleep 30 & echo $! > {}; echo started", pidfile.display()),
    );
    let started = Instant::now();
    assert_eq!(super::run(&run), ScriptOutcome::Ok);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "run waited {took:?} for the daemon"
    );
    let pid = read_pid(&pidfile);
    assert!(alive(pid), "the daemon the script started was killed");
    // Its output was read by the reader thread, which is still running.
    wait_until(
        Duration::from_secs(5),
        "the script's output in the log",
        || log_lines(&run).contains(&"web start_prim: started".to_owned()),
    );
    // Clean up what the test started.
    // SAFETY: signals the one process this test's script started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn not_started_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = sh(dir.path(), "");
    run.path = dir.path().join("missing");
    let ScriptOutcome::NotStarted(why) = super::run(&run) else {
        panic!("a missing script started");
    };
    assert!(why.contains("not found"), "{why}");

    let plain = dir.path().join("plain");
    fs::write(&plain, "#!/bin/sh\n").unwrap();
    run.path = plain;
    let ScriptOutcome::NotStarted(why) = super::run(&run) else {
        panic!("a non-executable script started");
    };
    assert!(why.contains("chmod +x"), "{why}");
    assert!(log_lines(&run)[1].contains("not started: "));

    let mut run = sh(dir.path(), "true");
    run.cwd = dir.path().join("nowhere");
    let ScriptOutcome::NotStarted(why) = super::run(&run) else {
        panic!("started in a missing directory");
    };
    assert!(why.contains("does not exist"), "{why}");
}

#[test]
fn an_unwritable_log_does_not_stop_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = sh(dir.path(), "echo x");
    run.log = dir.path().join("no/such/dir/module.log");
    assert_eq!(super::run(&run), ScriptOutcome::Ok);
}

#[test]
fn kill_group_refuses_the_special_groups() {
    for pgid in [0, 1, u32::MAX] {
        assert_eq!(
            kill_group(pgid, 0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "{pgid}"
        );
    }
}

#[test]
fn wait_timeout_returns_none_then_the_status() {
    let mut child = Command::new("/bin/sh")
        .args(["-c", "read x; exit 7"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(
        wait_timeout(&mut child, Duration::from_millis(50)).unwrap(),
        None
    );
    drop(child.stdin.take());
    let status = wait_timeout(&mut child, Duration::from_secs(10)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(7));
}

#[test]
fn timestamps() {
    let at = |secs: u64, ms: u64| {
        timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
    assert_eq!(at(1_765_015_872, 345), "2025-12-06T10:11:12.345Z");
}
