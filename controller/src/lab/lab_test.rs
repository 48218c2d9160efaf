//! Tests of the lab that need no daemon: the command line, the network of a
//! lab (built, pinged across, removed by `down` with its processes and
//! mounts), `down` of a half-built lab, and the Apache module's scripts run
//! by hand in a lab's node. They need root (namespaces, mounts), like the
//! lab itself. Each test lab is named `t<pid><letter>` and lives under a temp
//! dir; a guard runs `down` when the test ends, also when it panics.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use pretty_assertions::assert_eq;
use tempfile::TempDir;

use super::layout::{Host, Lab};
use super::{down, net, render, sys, LabCmd, LabError, LabName};

/// A lab under a temp dir; dropping it runs `down`.
struct TestLab {
    lab: Lab,
    root: TempDir,
}

impl TestLab {
    /// Lab `t<pid><tag>` under a fresh temp dir (0755: Apache's workers
    /// must reach into it), its own directory made.
    fn new(tag: char) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the lab's tests need root (network namespaces, mounts): run them as root"
        );
        let name: LabName = format!("t{}{tag}", std::process::id()).parse().unwrap();
        let root = tempfile::Builder::new()
            .prefix("mirrorfarm-lab-test.")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let lab = Lab::new(name, root.path());
        fs::create_dir_all(lab.logs_dir()).unwrap();
        Self { lab, root }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = down::down(&self.lab) {
            eprintln!("cleaning up test lab {}: {e}", self.lab.name());
        }
    }
}

/// Waits up to 5 s for one ping from `from` to `to` to be answered.
fn assert_pings(lab: &Lab, from: Host, to: Host) {
    let addr = to.addr().to_string();
    let answered = sys::wait_until(Duration::from_secs(5), || {
        let mut ping = sys::in_netns(&lab.netns(from), "ping");
        ping.args(["-n", "-q", "-c", "1", "-W", "1", &addr]);
        sys::output_within(ping, Duration::from_secs(3))
            .filter(|o| o.status.success())
            .map(drop)
    });
    assert!(
        answered.is_some(),
        "{to} ({addr}) does not answer ping from {from}"
    );
}

#[test]
fn the_network_connects_every_host_and_down_removes_it_all() {
    let t = TestLab::new('n');
    let lab = &t.lab;
    net::build(lab, &Host::ALL).unwrap();
    for ns in lab.namespaces() {
        assert!(sys::netns_exists(&ns), "namespace {ns} is missing");
    }
    assert_eq!(
        net::host_side_ports(lab),
        Vec::<String>::new(),
        "a link on the host"
    );
    for (from, to) in [
        (Host::Node1, Host::Node2),
        (Host::Node2, Host::Node1),
        (Host::Client, Host::Node1),
        (Host::Client, Host::Node2),
        (Host::Witness, Host::Node1),
        (Host::Node2, Host::Witness),
        (Host::Client, Host::Farm1),
        (Host::Farm2, Host::Farm3),
        (Host::Farm3, Host::Node1),
    ] {
        assert_pings(lab, from, to);
    }

    // What down must also remove: a process started as the lab starts its
    // daemons, and a mount where a node's mirrorfs mount would be.
    let ns1 = lab.netns(Host::Node1);
    let mut sleeper = sys::spawn_in(
        &ns1,
        Path::new("sleep"),
        ["600"],
        &lab.log(Host::Node1),
        &lab.pid_file(Host::Node1),
    )
    .unwrap();
    let pid = sleeper.id() as i32;
    assert!(
        sys::wait_until(Duration::from_secs(5), || sys::runs_in(pid, &ns1)
            .then_some(()))
        .is_some()
    );
    assert_eq!(sys::live_pid(&lab.pid_file(Host::Node1), &ns1), Some(pid));
    let mnt = lab.on_node(Host::Node1, Path::new("/srv/apache-mirror/htdocs"));
    fs::create_dir_all(&mnt).unwrap();
    sys::run(
        "mount",
        [
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "labtest".as_ref(),
            mnt.as_os_str(),
        ],
        "",
    )
    .unwrap();
    let mounts: Vec<PathBuf> = sys::mounts_under(lab.dir())
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(mounts, [mnt]);

    down::down(lab).unwrap();
    assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGTERM));
    for ns in lab.namespaces() {
        assert!(!sys::netns_exists(&ns), "namespace {ns} is left");
    }
    assert_eq!(sys::mounts_under(t.root.path()).unwrap(), []);
    assert!(!lab.dir().exists(), "{} is left", lab.dir().display());
    // Idempotent.
    down::down(lab).unwrap();
}

#[test]
fn down_removes_a_half_built_lab() {
    let t = TestLab::new('h');
    let lab = &t.lab;
    // As if `up` failed after two namespaces: no bridge, no links, no pid files.
    for ns in [lab.switch_netns(), lab.netns(Host::Node1)] {
        sys::ip(["netns", "add", &ns]).unwrap();
    }
    let ns1 = lab.netns(Host::Node1);
    let mut stray = sys::in_netns(&ns1, "sleep");
    let mut stray = stray.arg("600").spawn().unwrap();
    let pid = stray.id() as i32;
    assert!(
        sys::wait_until(Duration::from_secs(5), || sys::runs_in(pid, &ns1)
            .then_some(()))
        .is_some()
    );

    down::down(lab).unwrap();
    assert_eq!(stray.wait().unwrap().signal(), Some(libc::SIGTERM));
    for ns in lab.namespaces() {
        assert!(!sys::netns_exists(&ns), "namespace {ns} is left");
    }
    assert!(!lab.dir().exists());
}

/// The module's scripts as the lab installs them, run by hand in node1 on
/// plain directories: Apache serves the DocumentRoot to the client, takes a
/// PUT into the upload directory, and is gone after stop_prim.
#[test]
fn start_prim_serves_and_takes_uploads_and_stop_prim_stops_it() {
    let t = TestLab::new('s');
    let lab = &t.lab;
    net::build(lab, &Host::MIRROR_PART).unwrap();
    let scripts = lab.scripts_dir();
    fs::create_dir_all(&scripts).unwrap();
    for (name, text) in render::SCRIPTS {
        let path = scripts.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let node = Host::Node1;
    let run_dir = lab.state_dir(node).join("apache");
    let docroot = lab.on_node(node, Path::new("/srv/apache-mirror/htdocs"));
    let uploads = lab.on_node(node, Path::new("/srv/apache-mirror/uploads"));
    for d in [&run_dir, &docroot, &uploads] {
        fs::create_dir_all(d).unwrap();
    }
    let script = |name: &str| {
        let mut cmd = sys::in_netns(&lab.netns(node), scripts.join(name));
        cmd.current_dir(&scripts)
            .env("MIRRORFARM_MODULE", "apache")
            .env("MIRRORFARM_NODE", "node1")
            .env("MIRRORFARM_PEER", "node2")
            .env("MIRRORFARM_VIP", "")
            .env("MIRRORFARM_DIR_1", &docroot)
            .env("MIRRORFARM_DIR_2", &uploads)
            .env("MIRRORFARM_RUN_DIR", &run_dir)
            .env("MIRRORFARM_PATH_PREFIX", lab.host_dir(node));
        let out = sys::output_within(cmd, Duration::from_secs(40))
            .unwrap_or_else(|| panic!("{name} did not finish within 40 s"));
        assert!(
            out.status.success(),
            "{name} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let curl = |args: &[&str]| {
        let mut c = sys::in_netns(&lab.netns(Host::Client), "curl");
        c.args(["-sS", "--max-time", "5"]).args(args);
        sys::output_within(c, Duration::from_secs(10)).expect("curl finishes")
    };
    let base = format!("http://{}", node.addr());
    let pid_file = run_dir.join("apache2.pid");

    script("start_prim");
    let pid = fs::read_to_string(&pid_file).unwrap();
    let page = curl(&["-f", &format!("{base}/")]);
    assert!(
        page.status.success(),
        "GET /: {}",
        String::from_utf8_lossy(&page.stderr)
    );
    assert!(String::from_utf8_lossy(&page.stdout).contains("mirrorfarm Apache mirror"));
    assert!(docroot.join("index.html").is_file());

    let body = format!(
        "uploaded through the lab's client by test pid {}\n",
        std::process::id()
    );
    let local = t.root.path().join("upload.txt");
    fs::write(&local, &body).unwrap();
    let url = format!("{base}/uploads/hello.txt");
    let put = |want: &str| {
        let out = curl(&[
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-T",
            &local.to_string_lossy(),
            &url,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "PUT: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    put("201");
    put("204"); // overwritten
    assert_eq!(fs::read_to_string(uploads.join("hello.txt")).unwrap(), body);
    let back = curl(&["-f", &url]);
    assert_eq!(String::from_utf8_lossy(&back.stdout), body);

    // A second start leaves the running Apache alone.
    script("start_prim");
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), pid);

    script("stop_prim");
    assert!(!pid_file.exists(), "stop_prim left {}", pid_file.display());
    let ns = [lab.netns(node)];
    assert!(
        sys::wait_until(Duration::from_secs(5), || sys::pids_in(&ns)
            .is_empty()
            .then_some(()))
        .is_some(),
        "processes left in {}: {:?}",
        ns[0],
        sys::pids_in(&ns)
    );
    assert!(
        !curl(&[&format!("{base}/")]).status.success(),
        "Apache still answers"
    );
    // Nothing to stop: still a success.
    script("stop_prim");
}

/// The command line as `main` embeds it (`mirrorfarm lab ...`).
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: LabCmd,
}

fn parse(args: &[&str]) -> Result<LabCmd, clap::Error> {
    Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied())).map(|c| c.cmd)
}

#[test]
fn the_command_line_has_defaults_and_checks_names() {
    let name = |s: &str| s.parse::<LabName>().unwrap();
    assert_eq!(
        parse(&["up"]).unwrap(),
        LabCmd::Up {
            name: name("mf"),
            no_farm: false
        }
    );
    assert_eq!(
        parse(&["up", "--no-farm", "--name", "a"]).unwrap(),
        LabCmd::Up {
            name: name("a"),
            no_farm: true
        }
    );
    assert_eq!(
        parse(&["start", "farm3"]).unwrap(),
        LabCmd::Start {
            node: Host::Farm3,
            name: name("mf")
        }
    );
    assert_eq!(
        parse(&["status", "--name", "x1", "--json"]).unwrap(),
        LabCmd::Status {
            name: name("x1"),
            json: true
        }
    );
    assert_eq!(
        parse(&["start", "witness"]).unwrap(),
        LabCmd::Start {
            node: Host::Witness,
            name: name("mf")
        }
    );
    assert_eq!(
        parse(&["start", "node2", "--name", "b"]).unwrap(),
        LabCmd::Start {
            node: Host::Node2,
            name: name("b")
        }
    );
    assert_eq!(
        parse(&["down", "--name", "z9"]).unwrap(),
        LabCmd::Down { name: name("z9") }
    );
    // The client runs nothing to start.
    assert!(parse(&["start", "client"]).is_err());
    let err = parse(&["down", "--name", "Bad-Name"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 to 10 characters"), "{err}");
    let _: LabError = "x".repeat(11).parse::<LabName>().unwrap_err();
}

/// The farm's files as `up` writes them (certificates made in process, as
/// `mirrorfs keygen` makes them): the farm module file that the lab renders
/// passes the daemon's own validation on every farm node, with the lab's
/// nodes, addresses, certificates, VIP and scripts, and the example's other
/// settings; the mirror nodes' module directory does not see it.
#[test]
fn the_farm_module_renders_and_passes_the_daemons_validation() {
    use crate::config::{self, ModuleKind};
    use crate::lab::layout::{FARM_VIP, PREFIX_LEN};

    let root = tempfile::tempdir().unwrap();
    let lab = Lab::new("mf".parse().unwrap(), root.path());
    fs::create_dir_all(lab.farm_scripts_dir()).unwrap();
    fs::create_dir_all(lab.certs_dir()).unwrap();
    for host in Host::FARM {
        mirrorfs::net::tls::keygen(&lab.certs_dir(), host.name()).unwrap();
    }
    let module_file = lab.farm_module_file();
    fs::write(&module_file, render::farm_module_file(&lab)).unwrap();
    for (name, text) in render::FARM_SCRIPTS {
        let path = lab.farm_scripts_dir().join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let example: ron::Value = ron::from_str(render::FARM_EXAMPLE).unwrap();
    let ours: ron::Value = ron::from_str(&fs::read_to_string(&module_file).unwrap()).unwrap();
    assert_ne!(example, ours);

    for host in Host::FARM {
        let node_file = lab.node_file(host);
        fs::create_dir_all(node_file.parent().unwrap()).unwrap();
        fs::write(
            &node_file,
            render::node_file(&lab, host, Path::new("/bin/true")),
        )
        .unwrap();
        let node = config::load_node(&node_file).unwrap();
        assert_eq!(node.modules, lab.farm_modules_dir());
        let m = config::load_module(&module_file, &node).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.name, "apache-farm");
        assert_eq!(m.kind, ModuleKind::Farm);
        let nodes: Vec<(String, Vec<String>, PathBuf, u32)> = m
            .nodes
            .iter()
            .map(|n| {
                let addrs = n.addrs.iter().map(|a| a.to_string()).collect();
                (n.name.clone(), addrs, n.cert.clone(), n.weight)
            })
            .collect();
        let want: Vec<(String, Vec<String>, PathBuf, u32)> = Host::FARM
            .iter()
            .map(|&h| (h.name().into(), vec![h.addr().to_string()], lab.cert(h), 1))
            .collect();
        assert_eq!(nodes, want);
        let farm = m.farm.as_ref().unwrap();
        let vips: Vec<(std::net::Ipv4Addr, u8, String)> = farm
            .vips
            .iter()
            .map(|v| (v.addr, v.prefix, v.interface.clone()))
            .collect();
        assert_eq!(vips, [(FARM_VIP, PREFIX_LEN, "eth0".to_owned())]);
        assert_eq!(m.heartbeat_port, 7440);
        assert_eq!(m.scripts.dir, lab.farm_scripts_dir());
    }
    // Nothing of the example's machine is left outside comments.
    let text = fs::read_to_string(&module_file).unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for gone in ["/etc/mirrorfarm", "10.78.", "\"node"] {
            assert!(!line.contains(gone), "left over ({gone}): {line}");
        }
    }
    // A mirror node's daemon does not load the farm's file (it would refuse
    // a module it is no node of).
    assert_ne!(lab.modules_dir_of(Host::Node1), lab.farm_modules_dir());
    assert!(!module_file.starts_with(lab.modules_dir()));
}

/// The farm's scripts as the lab installs them, run by hand in farm2 as
/// its daemon would (in the run dir `down` knows): Apache serves the page
/// naming the node and big.bin to the client on the node's address; then
/// `down` stops that detached Apache (by its pid file and namespace) and
/// leaves nothing.
#[test]
fn start_both_serves_the_node_and_down_stops_the_detached_apache() {
    let t = TestLab::new('f');
    let lab = &t.lab;
    net::build(lab, &[Host::Client, Host::Farm2]).unwrap();
    let scripts = lab.farm_scripts_dir();
    fs::create_dir_all(&scripts).unwrap();
    for (name, text) in render::FARM_SCRIPTS {
        let path = scripts.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let node = Host::Farm2;
    let pid_file = lab.app_pid_file(node);
    let run_dir = pid_file.parent().unwrap().to_owned();
    fs::create_dir_all(&run_dir).unwrap();
    // The run dir's parents must be reachable by www-data.
    for d in run_dir.ancestors().take_while(|d| d.starts_with(lab.dir())) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = sys::in_netns(&lab.netns(node), scripts.join("start_both"));
    cmd.current_dir(&scripts)
        .env("MIRRORFARM_MODULE", "apache-farm")
        .env("MIRRORFARM_NODE", node.name())
        .env("MIRRORFARM_RUN_DIR", &run_dir);
    let out = sys::output_within(cmd, Duration::from_secs(40)).expect("start_both finishes");
    assert!(
        out.status.success(),
        "start_both: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = sys::pid_of(&pid_file, "apache2").expect("Apache runs");
    assert!(sys::runs_in(pid, &lab.netns(node)));
    let curl = |args: &[&str]| {
        let mut c = sys::in_netns(&lab.netns(Host::Client), "curl");
        c.args(["-sS", "-f", "--max-time", "10"]).args(args);
        sys::output_within(c, Duration::from_secs(15)).expect("curl finishes")
    };
    let base = format!("http://{}", node.addr());
    let page = curl(&[&format!("{base}/")]);
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("served by farm2"),
        "{page:?}"
    );
    let size = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{base}/big.bin"),
    ]);
    assert_eq!(String::from_utf8_lossy(&size.stdout), "67108864");

    down::down(lab).unwrap();
    assert!(!sys::alive_as(pid, "apache2"), "Apache (pid {pid}) is left");
    for ns in lab.namespaces() {
        assert!(!sys::netns_exists(&ns), "namespace {ns} is left");
    }
    assert!(!lab.dir().exists());
}
