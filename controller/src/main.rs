//! The `mirrorfarm` command: the node daemon (`daemon`), the quorum witness
//! (`witness`), the operator's CLI talking to the daemon over its control
//! socket (`state`, `start`, `stop`, `restart`, `swap`, `prim`, `second`,
//! `log`), `check` (validate the configuration without changing anything)
//! and the one-machine lab (`lab`). Parses flags, sets up logging and the
//! signal handlers, and hands over to the library.
//!
//! Exit codes: 0 success; 2 the command could not do its job (bad flags or
//! files, the daemon unreachable, an order refused: the message says why and
//! what to do).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use controller::ctl::{self, client, Answer, Request};
use controller::driver::{daemon, witness};
use controller::{config, lab};

#[derive(Parser, Debug)]
#[command(
    name = "mirrorfarm",
    version,
    about = "Shared-nothing high availability: mirror modules, witness and lab"
)]
struct Cli {
    /// The daemon's control socket (the node file's `socket`).
    #[arg(long, global = true, default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node daemon (foreground; logs to stderr).
    Daemon {
        /// This node's settings.
        #[arg(long, default_value = "/etc/mirrorfarm/node.ron")]
        config: PathBuf,
    },
    /// Run a quorum witness for two-node modules (on a third machine).
    Witness {
        /// UDP address to listen on, e.g. 10.0.0.3:7430.
        #[arg(long)]
        listen: SocketAddr,
        /// The witness's private key.
        #[arg(long)]
        key: PathBuf,
        /// The witness's certificate.
        #[arg(long)]
        cert: PathBuf,
        /// A node's certificate (repeat for every node it serves).
        #[arg(long = "peer-cert", required = true)]
        peer_cert: Vec<PathBuf>,
        /// Where the witness keeps which node's data is behind.
        #[arg(long, default_value = "/var/lib/mirrorfarm/witness.json")]
        state: PathBuf,
    },
    /// Show the modules' states (all, or one in detail).
    State {
        /// One module.
        module: Option<String>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Start a module on this node.
    Start { module: String },
    /// Stop a module on this node (its peer takes over if this node is primary).
    Stop { module: String },
    /// Restart the application on the primary (scripts only; no failover).
    Restart { module: String },
    /// Planned switchover: the secondary becomes primary.
    Swap { module: String },
    /// This node's data is the good one: start as primary (when both wait).
    Prim { module: String },
    /// The peer's data is the good one: start as secondary (when both wait).
    Second { module: String },
    /// Show a module's log (`-f`: follow).
    Log {
        module: String,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many lines of the end to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
    },
    /// Validate this node's configuration and every module file, changing
    /// nothing.
    Check {
        /// This node's settings.
        #[arg(long, default_value = "/etc/mirrorfarm/node.ron")]
        config: PathBuf,
    },
    /// The one-machine lab: the cluster in network namespaces.
    Lab {
        #[command(subcommand)]
        cmd: lab::LabCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Daemon { config } => run_daemon(&config),
        Cmd::Witness {
            listen,
            key,
            cert,
            peer_cert,
            state,
        } => run_witness(witness::WitnessConfig {
            listen,
            key,
            cert,
            peers: peer_cert,
            state,
        }),
        Cmd::State { module, json } => state(&cli.socket, module, json),
        Cmd::Start { module } => order(&cli.socket, Request::Start { module }),
        Cmd::Stop { module } => order(&cli.socket, Request::Stop { module }),
        Cmd::Restart { module } => order(&cli.socket, Request::Restart { module }),
        Cmd::Swap { module } => order(&cli.socket, Request::Swap { module }),
        Cmd::Prim { module } => order(&cli.socket, Request::Prim { module }),
        Cmd::Second { module } => order(&cli.socket, Request::Second { module }),
        Cmd::Log {
            module,
            follow,
            lines,
        } => log(&cli.socket, module, follow, lines),
        Cmd::Check { config } => check(&config),
        Cmd::Lab { cmd } => match lab::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("mirrorfarm: {msg}");
    ExitCode::from(2)
}

fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: the lab and services write to log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn run_daemon(path: &std::path::Path) -> ExitCode {
    logging();
    let node = match config::load_node(path) {
        Ok(n) => n,
        Err(e) => return fail(&e.to_string()),
    };
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    }) {
        return fail(&format!("cannot install the signal handler: {e}"));
    }
    match daemon::run(node, rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn run_witness(cfg: witness::WitnessConfig) -> ExitCode {
    logging();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    if let Err(e) = ctrlc::set_handler(move || {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(());
        }
    }) {
        return fail(&format!("cannot install the signal handler: {e}"));
    }
    match witness::run(cfg, async move {
        let _ = rx.await;
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn state(socket: &std::path::Path, module: Option<String>, json: bool) -> ExitCode {
    match client::request(socket, &Request::State { module }) {
        Ok(Answer::State(st)) => {
            if json {
                println!("{}", serde_json::to_string(&st).unwrap_or_default());
            } else {
                print!("{}", st.render_text());
            }
            ExitCode::SUCCESS
        }
        Ok(a) => answered(&a),
        Err(e) => unreachable(&e),
    }
}

fn order(socket: &std::path::Path, req: Request) -> ExitCode {
    match client::request(socket, &req) {
        Ok(a) => answered(&a),
        Err(e) => unreachable(&e),
    }
}

fn log(socket: &std::path::Path, module: String, follow: bool, lines: u32) -> ExitCode {
    match client::log(socket, &module, follow, lines) {
        Ok(stream) => {
            for line in stream {
                match line {
                    Ok(l) => println!("{l}"),
                    Err(e) => return unreachable(&e),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => unreachable(&e),
    }
}

/// Prints an answer (an error on stderr) and exits with its code.
fn answered(a: &Answer) -> ExitCode {
    match a {
        Answer::Error(e) => eprintln!("mirrorfarm: {e}"),
        other => print!("{}", other.render_text()),
    }
    ExitCode::from(ctl::exit_code(a))
}

fn unreachable(e: &client::ClientError) -> ExitCode {
    eprintln!("mirrorfarm: {e}");
    ExitCode::from(e.exit_code())
}

/// The preflight of farm modules: through this node's running daemon, do
/// frames to each farm's virtual MAC reach every member (the daemons probe
/// it all the time)? Prints what it finds; false if they do not.
fn farm_flooding(node: &config::NodeConfig, modules: &[config::Module]) -> bool {
    let mut ok = true;
    for m in modules
        .iter()
        .filter(|m| m.kind == config::ModuleKind::Farm)
    {
        let req = Request::State {
            module: Some(m.name.clone()),
        };
        let farm = match client::request(&node.socket, &req) {
            Ok(Answer::State(st)) => st.modules.into_iter().next().and_then(|s| s.farm),
            _ => None,
        };
        let Some(farm) = farm else {
            println!(
                "{}: flooding not tested: the daemon does not answer on {} — start the daemons on \
                 every node, then run `mirrorfarm check` again to test that frames for the \
                 virtual MAC reach every node",
                m.name,
                node.socket.display()
            );
            continue;
        };
        if !farm.flood_tested {
            println!(
                "{}: flooding not tested yet (the daemon has run less than 15 s, or cannot \
                 listen for probes: see the module log); run `mirrorfarm check` again",
                m.name
            );
        } else if farm.flood_problems.is_empty() {
            let running = farm
                .members
                .iter()
                .filter(|p| p.in_view || p.name == node.name)
                .count();
            println!(
                "{}: frames to the virtual MAC reach every running member ({running} of {})",
                m.name,
                farm.members.len()
            );
        } else {
            ok = false;
            for p in &farm.flood_problems {
                eprintln!("{}: {p}: {}", m.name, ctl::render::FLOOD_FIX);
            }
        }
    }
    ok
}

fn check(path: &std::path::Path) -> ExitCode {
    let node = match config::load_node(path) {
        Ok(n) => n,
        Err(e) => return fail(&e.to_string()),
    };
    println!("{}: node {} ok", path.display(), node.name);
    let (modules, errors) = config::load_modules(&node);
    for m in &modules {
        println!(
            "{}: module {} ok ({:?}, {} nodes, digest {:016x})",
            m.file.display(),
            m.name,
            m.kind,
            m.nodes.len(),
            m.digest
        );
    }
    for e in &errors {
        eprintln!("{e}");
    }
    let flooding = farm_flooding(&node, &modules);
    if errors.is_empty() && flooding {
        ExitCode::SUCCESS
    } else if errors.is_empty() {
        ExitCode::from(2)
    } else {
        eprintln!(
            "mirrorfarm: {} module file(s) refused: fix them (the daemon starts no module while one is broken)",
            errors.len()
        );
        ExitCode::from(2)
    }
}
