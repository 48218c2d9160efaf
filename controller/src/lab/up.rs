//! `lab up` (build a lab and wait until its mirror serves) and `lab start`
//! (restart one host of a lab whose processes were killed).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::layout::{Host, Lab, FARM_MODULE, FARM_VIP, MODULE, VIP, WITNESS_PORT};
use super::render::{self, DirSpec};
use super::{current_exe, existing, install, net, not_found, status, sys, LabError};

/// How long `up` waits for PRIM on one node and SECOND on the other.
const READY_BOUND: Duration = Duration::from_secs(90);
/// How long `up` then waits for the client to fetch the VIP's page.
const VIP_BOUND: Duration = Duration::from_secs(30);
/// How long the witness gets to bind its port.
const WITNESS_BOUND: Duration = Duration::from_secs(15);
/// How long `up` then waits for UP on every farm node (from the end of the
/// mirror's waits; the farm daemons start with the mirror's).
const FARM_BOUND: Duration = Duration::from_secs(60);
/// How long a restarted daemon gets to answer on its socket.
const DAEMON_BOUND: Duration = Duration::from_secs(30);
/// How long leftovers of a host get after SIGTERM before SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// How often `up` asks the daemons for their state.
const STATE_POLL: Duration = Duration::from_millis(500);
/// How often `up` repeats the states while they do not change.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Lines of each log printed when something fails.
const TAIL_LINES: usize = 25;

/// Builds lab `lab` (with its farm unless `farm` is false) and waits until
/// the module is PRIM on one node and SECOND on the other and the client
/// fetches the VIP's page; then, bounded, until the farm is UP on every farm
/// node and the client fetches the farm's VIP. The farm's outcome is
/// reported, never fatal: a farm daemon that exits or a farm that does not
/// come up leaves the mirror lab up (`lab status` shows the farm's states).
pub(crate) fn up(lab: &Lab, farm: bool) -> Result<(), LabError> {
    sys::require_root()?;
    if let Some(what) = existing(lab) {
        return Err(LabError::Exists {
            name: lab.name().to_string(),
            what,
        });
    }
    install::ensure_packages()?;
    let exe = current_exe()?;
    let mirrorfs = mirrorfs_bin(&exe)?;
    build(lab, &exe, &mirrorfs, farm).map_err(|e| match e {
        // Already says that the lab is left up, and how to remove it.
        e @ LabError::NotReady { .. } => e,
        e => LabError::UpFailed {
            name: lab.name().to_string(),
            source: Box::new(e),
        },
    })
}

/// Restarts `host` of `lab`: stops what is left of its processes, lazily
/// unmounts its dead FUSE mounts, starts its daemon (or the witness) again
/// and waits until it answers.
pub(crate) fn start(lab: &Lab, host: Host) -> Result<(), LabError> {
    sys::require_root()?;
    if existing(lab).is_none() {
        return Err(not_found(lab));
    }
    let exe = current_exe()?;
    let ns = lab.netns(host);
    if host.is_farm() && !lab.has_farm() {
        return Err(LabError::NotStarted {
            what: host.to_string(),
            detail: format!(
                "lab {0} has no farm (it was built with --no-farm): `mirrorfarm lab down \
                 --name {0}` and `mirrorfarm lab up --name {0}` build one",
                lab.name()
            ),
            log: lab.log(host),
        });
    }
    if !sys::netns_exists(&ns) {
        return Err(LabError::NotStarted {
            what: host.to_string(),
            detail: format!(
                "its namespace {ns} does not exist (a half-built lab?): `mirrorfarm lab down \
                 --name {0}` and `mirrorfarm lab up --name {0}`",
                lab.name()
            ),
            log: lab.log(host),
        });
    }
    set_umask();
    let namespace = [ns.clone()];
    if let Some(pids) = sys::pids_in(&namespace).get(&ns) {
        println!("{host}: stopping what is left of it in {ns}: pids {pids:?}");
        sys::stop_all(&namespace, LEFTOVER_GRACE).map_err(|detail| LabError::NotStarted {
            what: host.to_string(),
            detail,
            log: lab.log(host),
        })?;
    }
    for m in sys::mounts_under(&lab.host_dir(host))? {
        if m.fstype.starts_with("fuse") && sys::is_dead_mount(&m.path) {
            println!("{host}: unmounting the dead mount {}", m.path.display());
            sys::unmount_lazy(&m.path).map_err(LabError::io(
                &m.path,
                "unmount it by hand (`umount -l PATH`) and start again",
            ))?;
        }
    }
    let mut child = spawn(lab, &exe, host)?;
    wait_started(lab, &exe, host, &mut child)?;
    match host {
        h if h.runs_daemon() => {
            let module = if h.is_farm() { FARM_MODULE } else { MODULE };
            let state = status::daemon_state(&exe, &lab.socket(host), module).state;
            println!(
                "{host}: daemon started (pid {}), module {module}: {state}; log {}",
                child.id(),
                lab.log(host).display()
            );
        }
        _ => println!(
            "{host}: started (pid {}); log {}",
            child.id(),
            lab.log(host).display()
        ),
    }
    Ok(())
}

/// The mirrorfs binary the nodes use: `MIRRORFS_BIN`, else the one beside
/// this binary.
fn mirrorfs_bin(exe: &Path) -> Result<PathBuf, LabError> {
    let path = match std::env::var_os("MIRRORFS_BIN") {
        Some(p) => PathBuf::from(p),
        None => exe.with_file_name("mirrorfs"),
    };
    match fs::canonicalize(&path) {
        Ok(p) if p.is_file() => Ok(p),
        _ => Err(LabError::NoMirrorfs { path }),
    }
}

/// Files, network, processes, then the waits.
fn build(lab: &Lab, exe: &Path, mirrorfs: &Path, farm: bool) -> Result<(), LabError> {
    let name = lab.name();
    set_umask();
    println!(
        "lab {name}: configuration and certificates in {}",
        lab.dir().display()
    );
    write_files(lab, mirrorfs, farm)?;
    let mut hosts = Host::MIRROR_PART.to_vec();
    if farm {
        hosts.extend(Host::FARM);
    }
    let mut namespaces: Vec<String> = hosts.iter().map(|&h| lab.netns(h)).collect();
    namespaces.push(lab.switch_netns());
    println!(
        "lab {name}: network namespaces {} on one bridge",
        namespaces.join(", ")
    );
    net::build(lab, &hosts)?;

    let mut witness = spawn(lab, exe, Host::Witness)?;
    wait_started(lab, exe, Host::Witness, &mut witness)?;
    println!(
        "lab {name}: witness listens on {}:{WITNESS_PORT} (pid {})",
        Host::Witness.addr(),
        witness.id()
    );
    let mut daemons = Vec::new();
    for host in Host::NODES {
        let child = spawn(lab, exe, host)?;
        println!("lab {name}: {host} daemon started (pid {})", child.id());
        daemons.push((host, child));
    }
    let mut farm_daemons = Vec::new();
    if farm {
        for host in Host::FARM {
            let child = spawn(lab, exe, host)?;
            println!("lab {name}: {host} daemon started (pid {})", child.id());
            farm_daemons.push((host, child));
        }
    }
    wait_ready(lab, exe, &mut daemons)?;
    wait_vip(lab, VIP)?;
    if farm {
        wait_farm(lab, exe, &mut farm_daemons);
    } else {
        println!("lab {name}: no farm (--no-farm)");
    }

    print!("{}", status::render_text(&status::collect(lab, exe)));
    println!(
        "lab {name} is up. Try:\n  \
         ip netns exec {client} curl http://{VIP}/\n  \
         {farm_hint}\
         ip netns exec {client} curl -T FILE http://{VIP}/uploads/FILE\n  \
         mirrorfarm lab status --name {name}\n  \
         kill the primary's processes: kill $(ip netns pids {n1}); then mirrorfarm lab start node1 --name {name}\n  \
         mirrorfarm lab down --name {name}\n\
         logs: {logs}",
        client = lab.netns(Host::Client),
        farm_hint = if farm {
            format!(
                "ip netns exec {} curl http://{FARM_VIP}/   (the farm, once UP: the page \
                 names the node)\n  ",
                lab.netns(Host::Client)
            )
        } else {
            String::new()
        },
        n1 = lab.netns(Host::Node1),
        logs = lab.logs_dir().display(),
    );
    Ok(())
}

/// The state directory: certificates, the module and its scripts, the node
/// files, each node's directories; the farm's too when `farm`.
fn write_files(lab: &Lab, mirrorfs: &Path, farm: bool) -> Result<(), LabError> {
    // The example is built in, and render's tests parse it.
    let dirs = render::module_dirs(render::MODULE_EXAMPLE).expect("the built-in example parses");
    let mut made = vec![
        lab.scripts_dir(),
        lab.logs_dir(),
        lab.host_dir(Host::Witness),
    ];
    for host in Host::NODES {
        made.push(lab.state_dir(host));
        made.extend(lab.socket(host).parent().map(Path::to_owned));
        for DirSpec { backing, mount } in &dirs {
            made.push(lab.on_node(host, backing));
            made.push(lab.on_node(host, mount));
        }
    }
    let farm_hosts: &[Host] = if farm { &Host::FARM } else { &[] };
    for &host in farm_hosts {
        made.push(lab.state_dir(host));
        made.extend(lab.socket(host).parent().map(Path::to_owned));
    }
    if farm {
        made.push(lab.farm_scripts_dir());
    }
    for dir in &made {
        mkdirs(dir)?;
    }
    let keygen_fix =
        "check the mirrorfs binary (MIRRORFS_BIN) and that the lab's directory is writable";
    for &host in [Host::Node1, Host::Node2, Host::Witness]
        .iter()
        .chain(farm_hosts)
    {
        let mut args: Vec<std::ffi::OsString> = vec!["keygen".into(), "--dir".into()];
        args.push(lab.certs_dir().into());
        args.extend(["--name".into(), host.name().into()]);
        sys::run(&mirrorfs.to_string_lossy(), args, keygen_fix)?;
    }
    write(&lab.module_file(), &render::module_file(lab), 0o644)?;
    for (name, text) in render::SCRIPTS {
        write(&lab.scripts_dir().join(name), text, 0o755)?;
    }
    if farm {
        write(
            &lab.farm_module_file(),
            &render::farm_module_file(lab),
            0o644,
        )?;
        for (name, text) in render::FARM_SCRIPTS {
            write(&lab.farm_scripts_dir().join(name), text, 0o755)?;
        }
    }
    for &host in Host::NODES.iter().chain(farm_hosts) {
        write(
            &lab.node_file(host),
            &render::node_file(lab, host, mirrorfs),
            0o644,
        )?;
    }
    Ok(())
}

/// Starts `host`'s process in its namespace, detached, logging to its log.
fn spawn(lab: &Lab, exe: &Path, host: Host) -> Result<Child, LabError> {
    let path = |p: PathBuf| p.display().to_string();
    let args: Vec<String> = match host {
        h if h.runs_daemon() => {
            vec![
                "daemon".into(),
                "--config".into(),
                path(lab.node_file(host)),
            ]
        }
        Host::Witness => vec![
            "witness".into(),
            "--listen".into(),
            format!("{}:{WITNESS_PORT}", Host::Witness.addr()),
            "--key".into(),
            path(lab.key(host)),
            "--cert".into(),
            path(lab.cert(host)),
            "--peer-cert".into(),
            path(lab.cert(Host::Node1)),
            "--peer-cert".into(),
            path(lab.cert(Host::Node2)),
            "--state".into(),
            path(lab.witness_state()),
        ],
        _ => {
            return Err(LabError::NotStarted {
                what: host.to_string(),
                detail: "the client runs no lab process: start node1, node2, witness or farm1..3"
                    .into(),
                log: lab.log(host),
            })
        }
    };
    sys::spawn_in(
        &lab.netns(host),
        exe,
        args,
        &lab.log(host),
        &lab.pid_file(host),
    )
}

/// Waits until `host`'s fresh process is ready: the witness has bound its
/// port, a daemon answers on its socket. Fails early if the process exits.
fn wait_started(lab: &Lab, exe: &Path, host: Host, child: &mut Child) -> Result<(), LabError> {
    let (bound, what) = match host {
        Host::Witness => (WITNESS_BOUND, format!("bind UDP port {WITNESS_PORT}")),
        _ => (
            DAEMON_BOUND,
            format!("answer on {}", lab.socket(host).display()),
        ),
    };
    let pid = child.id() as i32;
    let outcome = sys::wait_until(bound, || {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(Err(format!("it exited ({st})")));
        }
        let ready = match host {
            Host::Witness => sys::udp_bound(pid, WITNESS_PORT),
            _ => status::node_state(exe, &lab.socket(host)) != status::UNREACHABLE,
        };
        ready.then_some(Ok(()))
    });
    let detail = match outcome {
        Some(Ok(())) => return Ok(()),
        Some(Err(detail)) => detail,
        None => format!("it did not {what} within {} s", bound.as_secs()),
    };
    print_log_tails(lab);
    Err(LabError::NotStarted {
        what: format!(
            "the {host} {}",
            if host == Host::Witness {
                "process"
            } else {
                "daemon"
            }
        ),
        detail,
        log: lab.log(host),
    })
}

/// Waits until the module is PRIM on one node and SECOND on the other,
/// printing each change of the states seen.
fn wait_ready(lab: &Lab, exe: &Path, daemons: &mut [(Host, Child)]) -> Result<(), LabError> {
    println!(
        "lab {}: waiting (up to {} s) for PRIM on one node and SECOND on the other",
        lab.name(),
        READY_BOUND.as_secs()
    );
    let started = Instant::now();
    let mut seen = String::new();
    let mut printed = started;
    loop {
        for (host, child) in daemons.iter_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                print_log_tails(lab);
                return Err(LabError::NotStarted {
                    what: format!("the {host} daemon"),
                    detail: format!("it exited ({st})"),
                    log: lab.log(*host),
                });
            }
        }
        let states: Vec<String> = Host::NODES
            .iter()
            .map(|&h| status::node_state(exe, &lab.socket(h)))
            .collect();
        let now = Host::NODES
            .iter()
            .zip(&states)
            .map(|(h, s)| format!("{h} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Each change, and every PROGRESS_EVERY while nothing changes.
        if now != seen || printed.elapsed() >= PROGRESS_EVERY {
            println!("  {:5.1} s  {now}", started.elapsed().as_secs_f64());
            seen = now;
            printed = Instant::now();
        }
        let mut sorted = states.clone();
        sorted.sort();
        if sorted == ["PRIM", "SECOND"] {
            return Ok(());
        }
        if started.elapsed() >= READY_BOUND {
            print_log_tails(lab);
            return Err(LabError::NotReady {
                name: lab.name().to_string(),
                what: "the module did not reach PRIM on one node and SECOND on the other".into(),
                secs: READY_BOUND.as_secs(),
                seen,
                logs: lab.logs_dir(),
            });
        }
        std::thread::sleep(STATE_POLL);
    }
}

/// Fetches `url` from the client, within `bound`: the page's text, or the
/// last error seen.
fn client_fetch(lab: &Lab, url: &str, bound: Duration) -> Result<String, String> {
    let mut last = String::new();
    let fetched = sys::wait_until(bound, || {
        let mut curl = sys::in_netns(&lab.netns(Host::Client), "curl");
        curl.args(["-sS", "-f", "--max-time", "2", url]);
        match sys::output_within(curl, Duration::from_secs(5)) {
            Some(out) if out.status.success() => {
                Some(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Some(out) => {
                last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                None
            }
            None => {
                last = "curl did not finish".to_owned();
                None
            }
        }
    });
    fetched.ok_or(last)
}

/// Waits until the client fetches `http://VIP/` (the mirror's).
fn wait_vip(lab: &Lab, vip: std::net::Ipv4Addr) -> Result<(), LabError> {
    let url = format!("http://{vip}/");
    println!("lab {}: waiting for the client to fetch {url}", lab.name());
    let last = match client_fetch(lab, &url, VIP_BOUND) {
        Ok(_) => return Ok(()),
        Err(last) => last,
    };
    print_log_tails(lab);
    Err(LabError::NotReady {
        name: lab.name().to_string(),
        what: format!("the client could not fetch {url}"),
        secs: VIP_BOUND.as_secs(),
        seen: last,
        logs: lab.logs_dir(),
    })
}

/// Waits (up to [`FARM_BOUND`]) until the farm module is UP on every farm
/// node and the client fetches the farm's VIP, printing each change of the
/// states. Never fails: what went wrong (a daemon that exited, the states
/// when the bound passed, the fetch's error) is printed, with the farm's log
/// tails, as a warning; the lab stays up and `lab status` shows the farm.
/// (Until the daemon runs farm modules, the farm daemons exit at start and
/// this says so at once.)
fn wait_farm(lab: &Lab, exe: &Path, daemons: &mut [(Host, Child)]) {
    let name = lab.name();
    println!(
        "lab {name}: waiting (up to {} s) for the farm module {FARM_MODULE} to be UP on {}",
        FARM_BOUND.as_secs(),
        Host::FARM.map(Host::name).join(", ")
    );
    let started = Instant::now();
    let mut seen = String::new();
    let mut printed = started;
    let mut exited: Vec<String> = Vec::new();
    let problem = loop {
        for (host, child) in daemons.iter_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                let entry = format!("{host} daemon exited ({st})");
                if !exited.contains(&entry) {
                    exited.push(entry);
                }
            }
        }
        let states: Vec<String> = Host::FARM
            .iter()
            .map(|&h| status::daemon_state(exe, &lab.socket(h), FARM_MODULE).state)
            .collect();
        let now = Host::FARM
            .iter()
            .zip(&states)
            .map(|(h, s)| format!("{h} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        if now != seen || printed.elapsed() >= PROGRESS_EVERY {
            println!("  {:5.1} s  {now}", started.elapsed().as_secs_f64());
            seen = now;
            printed = Instant::now();
        }
        if states.iter().all(|s| s == "UP") {
            break None;
        }
        if exited.len() == daemons.len() {
            break Some(format!("every farm daemon exited: {}", exited.join(", ")));
        }
        if started.elapsed() >= FARM_BOUND {
            let mut what = format!(
                "the farm was not UP on every node within {} s (last seen: {seen})",
                FARM_BOUND.as_secs()
            );
            if !exited.is_empty() {
                what.push_str(&format!("; {}", exited.join(", ")));
            }
            break Some(what);
        }
        std::thread::sleep(STATE_POLL);
    };
    let problem = problem.or_else(|| {
        let url = format!("http://{FARM_VIP}/");
        println!("lab {name}: farm UP; waiting for the client to fetch {url}");
        match client_fetch(lab, &url, VIP_BOUND) {
            Ok(page) => {
                let by = page
                    .lines()
                    .find_map(|l| l.strip_prefix("<h1>served by "))
                    .map(|l| l.trim_end_matches("</h1>").to_owned())
                    .unwrap_or_else(|| "?".to_owned());
                println!("lab {name}: the client fetches {url} (served by {by})");
                None
            }
            Err(last) => Some(format!(
                "the farm is UP but the client could not fetch {url} within {} s ({last})",
                VIP_BOUND.as_secs()
            )),
        }
    });
    if let Some(problem) = problem {
        for host in Host::FARM {
            let log = lab.log(host);
            if let Ok(text) = sys::tail_file(&log, 5) {
                eprintln!("==> {} <==\n{text}", log.display());
            }
        }
        eprintln!(
            "lab {name}: WARNING: {problem}. The mirror part is up and usable; the farm's \
             state is in `mirrorfarm lab status --name {name}` and its logs in {} \
             (farmN.log); `mirrorfarm lab start farmN --name {name}` restarts a farm node's \
             daemon, `lab up --no-farm` builds a lab without the farm.",
            lab.logs_dir().display()
        );
    }
}

/// Prints the last lines of every log of the lab to stderr: the processes'
/// logs and the `*.log` files under the nodes' state and run directories
/// (module logs, Apache's), never crossing into a mount.
pub(crate) fn print_log_tails(lab: &Lab) {
    let mut files = Vec::new();
    find_logs(&lab.logs_dir(), 0, &mut files);
    for host in Host::NODES.into_iter().chain(Host::FARM) {
        find_logs(&lab.state_dir(host), 3, &mut files);
        if let Some(run) = lab.socket(host).parent() {
            find_logs(run, 3, &mut files);
        }
    }
    for f in files {
        match sys::tail_file(&f, TAIL_LINES) {
            Ok(text) => eprintln!("==> {} <==\n{text}", f.display()),
            Err(e) => eprintln!("==> {} <==\n(cannot read it: {e})\n", f.display()),
        }
    }
}

/// Adds the `*.log` files of `dir` (and of its subdirectories, `depth` levels
/// down, on the same file system) to `out`, sorted by path.
fn find_logs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_file() && p.extension().is_some_and(|e| e == "log") {
            out.push(p);
        } else if m.is_dir() && depth > 0 && m.dev() == meta.dev() {
            find_logs(&p, depth - 1, out);
        }
    }
}

/// Files and directories the lab makes are readable by all (www-data must
/// reach the DocumentRoot), whatever the caller's umask; the processes
/// started inherit it too. Keys are written 0600 by mirrorfs keygen.
fn set_umask() {
    // SAFETY: umask(2) cannot fail and touches no memory.
    unsafe { libc::umask(0o022) };
}

fn mkdirs(dir: &Path) -> Result<(), LabError> {
    fs::create_dir_all(dir).map_err(LabError::io(
        dir,
        "is the lab's parent directory writable (and this root)?",
    ))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    let fix = "is the lab's directory writable?";
    fs::write(path, text).map_err(LabError::io(path, fix))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(LabError::io(path, fix))
}
