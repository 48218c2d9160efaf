//! Test fixture shared by `module_test.rs` and `node_test.rs`: a temporary
//! `/etc/mirrorfarm` with real certificates (made by `mirrorfs keygen`), the
//! example node file and the example module's scripts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mirrorfs::net::tls;
use tempfile::TempDir;

use super::{load_module, load_node, ConfigError, Module, NodeConfig};

/// A temporary configuration tree:
/// `ROOT/certs/{node1,node2,node3,witness}.{key,crt}`, `ROOT/node.ron` (the
/// example's), `ROOT/modules/apache/{start_prim,stop_prim}` and
/// `ROOT/modules/apache-farm/{start_both,stop_both}` (executable stubs).
pub(super) struct Fixture {
    /// Keeps the tree alive.
    pub(super) dir: TempDir,
    /// `ROOT/certs`.
    pub(super) certs: PathBuf,
    /// `ROOT/modules`.
    pub(super) modules: PathBuf,
    /// `ROOT/node.ron`, loaded.
    pub(super) node: NodeConfig,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let root = dir.path().to_path_buf();
        let certs = root.join("certs");
        for name in ["node1", "node2", "node3", "witness"] {
            tls::keygen(&certs, name).expect("generate a test identity");
        }
        let modules = root.join("modules");
        let scripts = modules.join("apache");
        fs::create_dir_all(&scripts).expect("create the scripts directory");
        for name in ["start_prim", "stop_prim"] {
            write_executable(&scripts.join(name));
        }
        let farm_scripts = modules.join("apache-farm");
        fs::create_dir_all(&farm_scripts).expect("create the farm's scripts directory");
        for name in ["start_both", "stop_both"] {
            write_executable(&farm_scripts.join(name));
        }
        let node_file = root.join("node.ron");
        let node_text = substitute(&root, &Self::example_raw("node.ron"));
        fs::write(&node_file, node_text).expect("write node.ron");
        let node = load_node(&node_file).expect("the example node file loads");
        Self {
            dir,
            certs,
            modules,
            node,
        }
    }

    /// The fixture's root directory.
    pub(super) fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `examples/apache-mirror/NAME` with `/etc/mirrorfarm/` replaced by `ROOT/`.
    pub(super) fn example(&self, name: &str) -> String {
        self.substitute(&Self::example_raw(name))
    }

    /// `examples/apache-mirror/NAME` as it is.
    pub(super) fn example_raw(name: &str) -> String {
        Self::example_raw_in("apache-mirror", name)
    }

    /// `examples/EXAMPLE/NAME` as it is.
    pub(super) fn example_raw_in(example: &str, name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example)
            .join(name);
        fs::read_to_string(&path).expect("read the example file")
    }

    /// `text` with `/etc/mirrorfarm/` replaced by `ROOT/`.
    pub(super) fn substitute(&self, text: &str) -> String {
        substitute(self.root(), text)
    }

    /// Writes `text` as `modules/NAME.ron` and returns its path.
    pub(super) fn write_module(&self, name: &str, text: &str) -> PathBuf {
        let path = self.modules.join(format!("{name}.ron"));
        fs::write(&path, text).expect("write the module file");
        path
    }

    /// Writes `text` as `modules/apache.ron` and loads it for node1.
    pub(super) fn load(&self, text: &str) -> Result<Module, ConfigError> {
        load_module(&self.write_module("apache", text), &self.node)
    }

    /// `err`'s message with the fixture root shown as `$TMP`.
    pub(super) fn message(&self, err: &ConfigError) -> String {
        err.to_string()
            .replace(&self.root().display().to_string(), "$TMP")
    }
}

/// `text` with `/etc/mirrorfarm/` replaced by `ROOT/`.
fn substitute(root: &Path, text: &str) -> String {
    text.replace("/etc/mirrorfarm/", &format!("{}/", root.display()))
}

/// The example module with each `(from, to)` applied; each `from` must occur
/// exactly once, so that a change of the example shows here.
pub(super) fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
        text = text.replacen(from, to, 1);
    }
    text
}

/// Writes a `#!/bin/sh` stub with mode 0755.
pub(super) fn write_executable(path: &Path) {
    fs::write(path, "#!/bin/sh\nexit 0\n").expect("write a script stub");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod the stub");
}

/// One case of a `testdata/*_errors.txt` file.
#[derive(Debug, Default)]
pub(super) struct Case {
    /// What rule it shows.
    pub(super) name: String,
    /// `(text, replacement)` edits of the example.
    pub(super) edits: Vec<(String, String)>,
    /// The expected message, or `loaded`.
    pub(super) want: String,
}

/// Parses the case file (format described at its top).
pub(super) fn parse_cases(text: &str) -> Vec<Case> {
    let unescape = |s: &str| s.replace("\\n", "\n");
    let mut cases: Vec<Case> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        } else if let Some(name) = line.strip_prefix("case: ") {
            cases.push(Case {
                name: name.to_owned(),
                ..Case::default()
            });
        } else if let Some(from) = line.strip_prefix("edit: ") {
            let c = cases.last_mut().expect("`edit:` inside a case");
            c.edits.push((unescape(from), String::new()));
        } else if let Some(to) = line.strip_prefix("  to:") {
            let c = cases.last_mut().expect("`to:` inside a case");
            let edit = c.edits.last_mut().expect("`to:` after an `edit:`");
            edit.1 = unescape(to.strip_prefix(' ').unwrap_or(to));
        } else if let Some(want) = line.strip_prefix("want: ") {
            cases.last_mut().expect("`want:` inside a case").want = want.to_owned();
        } else {
            panic!("case file line {}: cannot parse {line:?}", n + 1);
        }
    }
    cases
}
