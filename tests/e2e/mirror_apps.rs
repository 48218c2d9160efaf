//! Issue 2, item 9: real applications on the mount. SQLite (in WAL and in
//! rollback-journal mode) and PostgreSQL commit one row per transaction in a
//! loop on the primary's mount; then the primary's mirrorfs is SIGKILLed, and a
//! copy of the replica, opened as a failover would open it, must hold every
//! transaction whose commit had returned to the client and pass the database's
//! own consistency checks. Apache serves files from the mount (sendfile, and
//! the kernel's passthrough for read-only opens) and serves a file's new bytes
//! once it is rewritten in place through the mount.
//!
//! The applications run in node1's network namespace, as on a primary; the
//! failover PostgreSQL runs on node2. Every process is a `Proc` or a guard
//! around one, declared after the `Mirror`, so it stops (and only it) before
//! the fixture unmounts, also when a test fails.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use crate::util::lab::{Node, Proc};
use crate::util::mirror::Mirror;
use crate::util::{cmd, pseudo_random, run_ok, tail, wait_for, within, Probe};

/// Commits the client must have seen return before the primary is killed.
const COMMITS_BEFORE_KILL: usize = 300;
/// How long those commits may take.
const COMMIT_DEADLINE: Duration = Duration::from_secs(20);
/// How long a server gets to accept connections (PostgreSQL: including crash
/// recovery) and to stop.
const SERVER_DEADLINE: Duration = Duration::from_secs(15);
/// How long file work through the mount may take before it counts as a hang.
const FS_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- SQLite

/// The SQLite client (python3's sqlite3 module): sets the journal mode given
/// and synchronous=FULL, prints the mode it got, then commits one row per
/// transaction for ever, printing each id (flushed) once its COMMIT returned.
/// A small autocheckpoint makes WAL mode also write and sync the database file
/// many times during the run.
const SQLITE_CLIENT: &str = r#"
import sqlite3, sys
path, mode = sys.argv[1], sys.argv[2]
db = sqlite3.connect(path, isolation_level=None)
got = db.execute("PRAGMA journal_mode=" + mode).fetchone()[0]
db.execute("PRAGMA synchronous=FULL")
db.execute("PRAGMA wal_autocheckpoint=100")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
print("journal_mode", got, flush=True)
i = 0
while True:
    i += 1
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t VALUES (?, randomblob(?))", (i, 100 + i * 37 % 900))
    db.execute("COMMIT")
    print(i, flush=True)
"#;

#[test]
fn sqlite_commits_survive_a_primary_kill() -> Result<()> {
    sqlite_commits_survive("wal")
}

/// The same in rollback-journal mode: each commit writes and syncs a journal,
/// then the database file, then deletes the journal.
#[test]
fn sqlite_commits_survive_a_primary_kill_in_rollback_journal_mode() -> Result<()> {
    sqlite_commits_survive("delete")
}

fn sqlite_commits_survive(journal_mode: &str) -> Result<()> {
    let mut m = Mirror::start(&[])?;
    let dir = m.mnt().join("sqlite");
    fs::create_dir(&dir).context("mkdir through the mount")?;
    let db = dir.join("app.db");
    let argv = [
        "python3".as_ref(),
        "-c".as_ref(),
        SQLITE_CLIENT.as_ref(),
        db.as_os_str(),
        journal_mode.as_ref(),
    ];
    let mut client = m.node1.spawn("sqlite-client", argv)?;
    wait_for_commits(&mut client, |c| sqlite_acked(&c.stdout()))?;
    let mode_line = client
        .stdout()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        mode_line == format!("journal_mode {journal_mode}"),
        "SQLite on the mount did not take journal_mode={journal_mode}: it said {mode_line:?}"
    );

    m.kill_mount()?;
    client.kill_hard()?; // the application dies with its primary
    let acked = sqlite_acked(&client.stdout());

    let failover = m.path().join("failover");
    fs::create_dir(&failover)?;
    let copied = copy_sqlite_files(&m.replica().join("sqlite"), "app.db", &failover)?;
    let copy = failover.join("app.db");
    let sqlite = |sql: &str| -> Result<String> {
        let out = run_ok(&mut cmd(
            "sqlite3",
            [
                "-batch".as_ref(),
                "-bail".as_ref(),
                copy.as_os_str(),
                sql.as_ref(),
            ],
        ))
        .with_context(|| format!("sqlite3 on the replica's copy ({copied:?})"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The first open reads the WAL, or rolls back a hot journal, as a failover would.
    let found = parse_ids(&sqlite("SELECT id FROM t ORDER BY id;")?)?;
    eprintln!(
        "SQLite ({journal_mode}): {} commits returned before the kill; the replica's {copied:?} hold {} rows",
        acked.len(),
        found.len()
    );
    check_survivors(&format!("SQLite ({journal_mode})"), &acked, &found)?;
    let integrity = sqlite("PRAGMA integrity_check;")?;
    ensure!(
        integrity.trim() == "ok",
        "SQLite ({journal_mode}): integrity_check of the replica's copy ({copied:?}) says:\n{}",
        tail(&integrity, 20)
    );
    Ok(())
}

/// The ids the SQLite client printed, in order (complete lines only: the
/// client may have been killed in the middle of one).
fn sqlite_acked(stdout: &str) -> Vec<u64> {
    complete_lines(stdout)
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Copies database `name` of `from` to `to` as a failover would take it: the
/// database file and, where present, its WAL, shared-memory index and rollback
/// journal. Returns the names copied (for messages).
fn copy_sqlite_files(from: &Path, name: &str, to: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = format!("{name}{suffix}");
        let src = from.join(&file);
        if src.exists() {
            fs::copy(&src, to.join(&file))
                .with_context(|| format!("copying {} off the replica", src.display()))?;
            copied.push(file);
        }
    }
    ensure!(
        copied.contains(&name.to_owned()),
        "the replica has no {name} in {}",
        from.display()
    );
    Ok(copied)
}

// ------------------------------------------------------------ PostgreSQL

/// The port of the test's PostgreSQL servers (on a unix socket in a temp dir):
/// not the default, so no system server can answer in their place.
const PG_PORT: &str = "5433";
/// Transactions in the client's script: far more than it gets to commit.
const PG_SCRIPT_ROWS: u64 = 20_000;

#[test]
fn postgres_commits_survive_a_primary_kill() -> Result<()> {
    let Some(bin) = postgres_bin_dir()? else {
        eprintln!(
            "SKIPPED postgres_commits_survive_a_primary_kill: no PostgreSQL server in \
             /usr/lib/postgresql/*/bin (scripts/setup.sh installs the postgresql package)"
        );
        return Ok(());
    };
    let mut m = Mirror::start(&[])?;
    open_to_services(&m)?;

    // The data directory belongs to postgres on both sides: made and chowned
    // through the mount, then initialised by postgres itself.
    let data = m.mnt().join("pgdata");
    fs::create_dir(&data).context("mkdir through the mount")?;
    run_ok(&mut cmd(
        "chown",
        ["postgres:postgres".as_ref(), data.as_os_str()],
    ))?;
    fs::set_permissions(&data, Permissions::from_mode(0o700))?;
    let initdb = as_postgres(&[
        bin.join("initdb").as_os_str(),
        "--pgdata".as_ref(),
        data.as_os_str(),
        "--username=postgres".as_ref(),
        "--auth=trust".as_ref(),
        "--data-checksums".as_ref(),
        "--no-locale".as_ref(),
        "--encoding=UTF8".as_ref(),
    ]);
    let mut initdb = m.node1.command(initdb);
    within(FS_DEADLINE, "initdb on the mount", move || {
        run_ok(&mut initdb)
    })??;

    let primary = Postgres::start(&m, &m.node1, &bin, &data, "postgres-primary")?;
    primary.sql("CREATE TABLE t (id integer PRIMARY KEY, payload text NOT NULL)")?;

    // psql in autocommit mode: each INSERT is its own transaction, and the
    // \warn after it (to stderr, unbuffered) runs only once its commit returned;
    // ON_ERROR_STOP ends the script at the first failure.
    let script = m.path().join("inserts.sql");
    let text: String = (1..=PG_SCRIPT_ROWS)
        .map(|i| {
            format!(
                "INSERT INTO t VALUES ({i}, repeat(md5('{i}'), {}));\n\\warn committed {i}\n",
                1 + i % 20
            )
        })
        .collect();
    fs::write(&script, text)?;
    let mut client = m.node1.spawn(
        "psql-client",
        primary.psql_argv(&["-q".as_ref(), "-f".as_ref(), script.as_os_str()]),
    )?;
    wait_for_commits(&mut client, |c| psql_acked(&c.stderr()))?;

    m.kill_mount()?;
    drop(primary); // stops the postgres this test started (immediate shutdown)
    client.kill_hard()?;
    let acked = psql_acked(&client.stderr());

    // Failover: a second server on a copy of the replica's data directory, on
    // node2, must recover from the crash and hold every acknowledged row.
    let copy = m.path().join("failover-pgdata");
    run_ok(&mut cmd(
        "cp",
        [
            "-a".as_ref(),
            m.replica().join("pgdata").as_os_str(),
            copy.as_os_str(),
        ],
    ))?;
    let failover = Postgres::start(&m, &m.node2, &bin, &copy, "postgres-failover")?;
    let found = parse_ids(&failover.sql("SELECT id FROM t ORDER BY id")?)?;
    eprintln!(
        "PostgreSQL: {} commits returned before the kill; the failover copy holds {} rows",
        acked.len(),
        found.len()
    );
    check_survivors("PostgreSQL", &acked, &found)?;
    ensure!(
        failover.log().contains("automatic recovery in progress"),
        "the failover server did not run crash recovery; its log:\n{}",
        tail(&failover.log(), 20)
    );
    // Every page read back (with data checksums on) and the index agrees with the heap.
    failover.sql("CREATE EXTENSION amcheck")?;
    let corrupt = failover.sql("SELECT count(*) FROM verify_heapam('t')")?;
    ensure!(
        corrupt.trim() == "0",
        "verify_heapam on the failover copy found {corrupt} problems"
    );
    failover.sql("SELECT bt_index_check('t_pkey', true)")?;
    Ok(())
}

/// A PostgreSQL server the test started: `postgres` in the foreground, as the
/// postgres user, on one node, with its socket in its own dir under the
/// fixture's temp dir. Dropping it is an immediate shutdown (SIGQUIT: the
/// postmaster takes its backends down, no checkpoint); `Proc` escalates to
/// SIGKILL if that does not end it.
struct Postgres {
    server: Proc,
    bin: PathBuf,
    sock: PathBuf,
    node: Node,
}

impl Postgres {
    /// Starts a server on `data` and waits until it accepts connections.
    fn start(m: &Mirror, node: &Node, bin: &Path, data: &Path, label: &str) -> Result<Self> {
        let sock = m.path().join(format!("{label}-sock"));
        fs::create_dir(&sock)?;
        run_ok(&mut cmd(
            "chown",
            ["postgres:postgres".as_ref(), sock.as_os_str()],
        ))?;
        let argv = as_postgres(&[
            bin.join("postgres").as_os_str(),
            "-D".as_ref(),
            data.as_os_str(),
            "-k".as_ref(),
            sock.as_os_str(),
            "-p".as_ref(),
            PG_PORT.as_ref(),
            "-c".as_ref(),
            "listen_addresses=".as_ref(),
            "-c".as_ref(),
            "fsync=on".as_ref(),
            "-c".as_ref(),
            "synchronous_commit=on".as_ref(),
            "-c".as_ref(),
            "full_page_writes=on".as_ref(),
        ]);
        let mut pg = Self {
            server: node.spawn(label, argv)?,
            bin: bin.to_owned(),
            sock,
            node: node.clone(),
        };
        let ready = [
            pg.bin.join("pg_isready").into_os_string(),
            "-h".into(),
            pg.sock.clone().into_os_string(),
            "-p".into(),
            PG_PORT.into(),
            "-U".into(),
            "postgres".into(),
        ];
        wait_for(
            SERVER_DEADLINE,
            &format!("{label} to accept connections"),
            || {
                match pg.server.try_status() {
                    Ok(Some(st)) => {
                        return Probe::Fail(anyhow!(
                            "{label} exited ({st}): {}",
                            tail(&pg.log(), 10)
                        ))
                    }
                    Ok(None) => {}
                    Err(e) => return Probe::Fail(e),
                }
                match pg.node.run(&ready) {
                    Ok(out) if out.status.success() => Probe::Ready(()),
                    Ok(out) => Probe::Pending(format!(
                        "pg_isready: {}; server log: {}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        tail(&pg.log(), 3)
                    )),
                    Err(e) => Probe::Fail(e),
                }
            },
        )?;
        Ok(pg)
    }

    /// psql connected to this server as postgres, without ~/.psqlrc, stopping
    /// at the first error, followed by `args`.
    fn psql_argv(&self, args: &[&OsStr]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            self.bin.join("psql").into(),
            "-X".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-h".into(),
            self.sock.clone().into(),
            "-p".into(),
            PG_PORT.into(),
            "-U".into(),
            "postgres".into(),
        ];
        argv.extend(args.iter().map(|a| a.to_os_string()));
        argv
    }

    /// Runs `sql` with psql on the server's node; returns its unaligned output.
    fn sql(&self, sql: &str) -> Result<String> {
        let argv = self.psql_argv(&["-At".as_ref(), "-c".as_ref(), sql.as_ref()]);
        let out = run_ok(&mut self.node.command(argv))
            .with_context(|| format!("{}: {sql}", self.server.label()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's log (its stderr).
    fn log(&self) -> String {
        self.server.stderr()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let stopped = self
            .server
            .signal(libc::SIGQUIT)
            .and_then(|()| self.server.wait_exit(SERVER_DEADLINE));
        if let Err(e) = stopped {
            eprintln!("{}: immediate shutdown failed: {e:#}", self.server.label());
        }
    }
}

/// `argv` run as the postgres user (setpriv execs it: the PID stays the one
/// the test started).
fn as_postgres(argv: &[&OsStr]) -> Vec<OsString> {
    let mut v: Vec<OsString> = [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ]
    .iter()
    .map(Into::into)
    .collect();
    v.extend(argv.iter().map(|a| a.to_os_string()));
    v
}

/// The newest `/usr/lib/postgresql/<major>/bin` holding a `postgres` binary.
fn postgres_bin_dir() -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Ok(None);
    };
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let major = entry.file_name().to_string_lossy().parse::<u32>();
        let bin = entry.path().join("bin");
        if let Ok(major) = major {
            if bin.join("postgres").is_file() {
                found.push((major, bin));
            }
        }
    }
    Ok(found.into_iter().max().map(|(_, bin)| bin))
}

/// The ids psql reported committed (`\warn committed N` lines on stderr).
fn psql_acked(stderr: &str) -> Vec<u64> {
    complete_lines(stderr)
        .filter_map(|l| l.strip_prefix("committed ")?.parse().ok())
        .collect()
}

// ---------------------------------------------------------------- Apache

/// Apache's port in node1's namespace; the namespace is the test's own, so
/// the port is free.
const APACHE_PORT: u16 = 8080;

#[test]
fn apache_serves_from_the_mount() -> Result<()> {
    let m = Mirror::start(&[])?;
    open_to_services(&m)?;
    let www = m.mnt().join("www");
    let small = pseudo_random(4, 4096);
    let large = pseudo_random(1024, 1 << 20);
    write_through_mount(&www, &[("small.bin", &small), ("large.bin", &large)], true)?;

    let conf_dir = m.path().join("apache");
    fs::create_dir(&conf_dir)?;
    let listen = format!("{}:{APACHE_PORT}", m.node1.ip);
    let conf = conf_dir.join("apache2.conf");
    fs::write(&conf, apache_config(&conf_dir, &listen, &www))?;
    let mut apache = m.node1.spawn(
        "apache",
        [
            "apache2".as_ref(),
            "-f".as_ref(),
            conf.as_os_str(),
            "-DFOREGROUND".as_ref(),
        ],
    )?;
    wait_for(SERVER_DEADLINE, "Apache to listen on node1", || {
        match apache.try_status() {
            Ok(Some(st)) => {
                let log = fs::read_to_string(conf_dir.join("error.log")).unwrap_or_default();
                return Probe::Fail(anyhow!(
                    "apache2 exited ({st}): {}{}",
                    apache.stderr_tail(),
                    tail(&log, 5)
                ));
            }
            Ok(None) => {}
            Err(e) => return Probe::Fail(e),
        }
        match m.node1.run(["ss", "-ltnH"]) {
            Ok(out) => {
                let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
                if sockets.contains(&listen) {
                    Probe::Ready(())
                } else {
                    Probe::Pending(format!("ss -ltn on node1:\n{sockets}"))
                }
            }
            Err(e) => Probe::Fail(e),
        }
    })?;

    let url = |name: &str| format!("http://{listen}/{name}");
    expect_body(&m.node1, &url("small.bin"), &small, "the 4 KiB file")?;
    expect_body(&m.node1, &url("large.bin"), &large, "the 1 MiB file")?;

    // Rewritten in place (same length, no truncation) through the mount: Apache
    // must serve the new bytes, and the replica must hold them.
    let small2 = pseudo_random(5, small.len());
    let large2 = pseudo_random(1025, large.len());
    write_through_mount(
        &www,
        &[("small.bin", &small2), ("large.bin", &large2)],
        false,
    )?;
    expect_body(
        &m.node1,
        &url("small.bin"),
        &small2,
        "the 4 KiB file after its rewrite",
    )?;
    expect_body(
        &m.node1,
        &url("large.bin"),
        &large2,
        "the 1 MiB file after its rewrite",
    )?;
    for (name, want) in [("small.bin", &small2), ("large.bin", &large2)] {
        let got = fs::read(m.replica().join("www").join(name))?;
        ensure!(
            got == *want,
            "replica's www/{name}: {}",
            first_difference(&got, want)
        );
    }

    let log = fs::read_to_string(conf_dir.join("error.log")).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            [":error]", ":crit]", ":alert]", ":emerg]"]
                .iter()
                .any(|lvl| l.contains(lvl))
        })
        .collect();
    ensure!(
        errors.is_empty(),
        "Apache logged errors:\n{}",
        errors.join("\n")
    );
    Ok(())
}

/// A self-contained Apache configuration: event MPM, workers as www-data,
/// the document root on the mount, sendfile and mmap on; pid file, error log
/// and runtime files in `dir`.
fn apache_config(dir: &Path, listen: &str, docroot: &Path) -> String {
    let (dir, docroot) = (dir.display(), docroot.display());
    let modules = "/usr/lib/apache2/modules";
    format!(
        r#"ServerRoot "{dir}"
ServerName node1
Listen {listen}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
User www-data
Group www-data
PidFile "{dir}/apache2.pid"
DefaultRuntimeDir "{dir}"
ErrorLog "{dir}/error.log"
LogLevel warn
EnableSendfile On
EnableMMAP On
DocumentRoot "{docroot}"
<Directory "{docroot}">
    Require all granted
</Directory>
"#
    )
}

/// Writes `files` into `dir` through the mount (creating `dir` and the files
/// if `create`, else overwriting them in place from offset 0), on a thread
/// bounded by [`FS_DEADLINE`].
fn write_through_mount(dir: &Path, files: &[(&str, &Vec<u8>)], create: bool) -> Result<()> {
    let dir = dir.to_owned();
    let files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, d)| ((*n).to_owned(), (*d).clone()))
        .collect();
    within(
        FS_DEADLINE,
        "writes through the mount",
        move || -> Result<()> {
            if create {
                fs::create_dir(&dir)?;
            }
            for (name, data) in files {
                let f = OpenOptions::new()
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(dir.join(&name))
                    .with_context(|| format!("open {name} through the mount"))?;
                f.write_all_at(&data, 0)?;
            }
            Ok(())
        },
    )?
}

/// Fetches `url` with curl from inside `node` and compares the body with `want`.
fn expect_body(node: &Node, url: &str, want: &[u8], what: &str) -> Result<()> {
    let out = run_ok(&mut node.command(["curl", "-sS", "--fail", "--max-time", "10", url]))
        .with_context(|| format!("fetching {what} from Apache"))?;
    ensure!(
        out.stdout == want,
        "Apache served {what} wrong: {}",
        first_difference(&out.stdout, want)
    );
    Ok(())
}

/// Describes how `got` differs from `want` (lengths, first differing offset).
fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(at) => format!(
            "{} bytes, first difference at offset {at} (want {} bytes)",
            got.len(),
            want.len()
        ),
        None if got.len() == want.len() => "identical".to_owned(),
        None => format!(
            "{} bytes where {} were expected (a prefix)",
            got.len(),
            want.len()
        ),
    }
}

// ---------------------------------------------------------------- shared

/// Lets the services' own users (postgres, www-data) reach the mount: the
/// fixture's temp dir is root's alone (0700); make it traversable, not listable.
fn open_to_services(m: &Mirror) -> Result<()> {
    fs::set_permissions(m.path(), Permissions::from_mode(0o711))
        .context("chmod 711 the fixture's temp dir")
}

/// Waits until `client` has reported [`COMMITS_BEFORE_KILL`] commits (as
/// counted by `acked` from its output), failing early if it exits.
fn wait_for_commits(client: &mut Proc, acked: impl Fn(&Proc) -> Vec<u64>) -> Result<()> {
    let what = format!("{COMMITS_BEFORE_KILL} commits by {}", client.label());
    wait_for(COMMIT_DEADLINE, &what, || {
        let n = acked(client).len();
        if n >= COMMITS_BEFORE_KILL {
            return Probe::Ready(());
        }
        match client.try_status() {
            Ok(Some(st)) => Probe::Fail(anyhow!(
                "the client exited ({st}) after {n} commits: {}",
                client.stderr_tail()
            )),
            Ok(None) => Probe::Pending(format!("{n} commits so far")),
            Err(e) => Probe::Fail(e),
        }
    })
}

/// Judges a failover copy: every id in `acked` (what the client saw committed:
/// 1, 2, ... in order) is in `found`, and `found` holds nothing else but at most
/// the next id, the transaction in flight when the primary died.
fn check_survivors(what: &str, acked: &[u64], found: &[u64]) -> Result<()> {
    let last = acked.len() as u64;
    ensure!(
        acked.iter().copied().eq(1..=last),
        "{what}: the client's acknowledgements are not 1..={last}: a bug in the test's client"
    );
    ensure!(last > 0, "{what}: the client acknowledged no commit");
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| found.binary_search(id).is_err())
        .collect();
    ensure!(
        missing.is_empty(),
        "{what}: {} of the {last} commits that returned to the client are missing on the \
         replica (first: {:?}); it holds {} rows, the last {:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        found.len(),
        found.last()
    );
    let rows = found.len() as u64;
    ensure!(
        found.iter().copied().eq(1..=rows) && rows <= last + 1,
        "{what}: the replica holds rows beyond the {last} acknowledged and the one in flight: \
         {rows} rows, the last {:?}",
        found.last()
    );
    Ok(())
}

/// One id per line, as the databases' command-line clients print a query.
fn parse_ids(text: &str) -> Result<Vec<u64>> {
    text.lines()
        .map(|l| {
            l.trim()
                .parse()
                .with_context(|| format!("not an id: {l:?}"))
        })
        .collect()
}

/// The lines of `text` that ended with a newline.
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines()
}

crate::on_sync_twins!(
    sqlite_commits_survive_a_primary_kill,
    sqlite_commits_survive_a_primary_kill_in_rollback_journal_mode,
    postgres_commits_survive_a_primary_kill,
);
