//! `cargo xtask tidy`: repository rules that no compiler checks.
//!
//! - every crate's `lib.rs` / `main.rs` starts with a `//!` crate doc;
//! - paragen crates depend on each other only in the direction of the layers
//!   (backend <- data <- models <- infer <- adaptive <- serve <- train <- compress <- cli
//!   <- fuzz; the server never depends on the trainer); see
//!   docs/architecture.md;
//! - library crates use `paragen-backend` only in tests (a dev-dependency), or with
//!   `default-features = false` (its backend extensions, such as the int8 kernel,
//!   without any backend), so a library user links no backend they did not choose;
//!   only the binary (and the fuzz harness) picks backends;
//! - no source file in `crates/` has more than [`MAX_CODE_LINES`] lines before its tests.

use std::path::Path;

use anyhow::{Context, bail};

/// The layers, lowest first. A crate may depend only on crates before it.
pub const LAYERS: [&str; 10] = [
    "paragen-backend",
    "paragen-data",
    "paragen-models",
    "paragen-infer",
    "paragen-adaptive",
    "paragen-serve",
    "paragen-train",
    "paragen-compress",
    "paragen-cli",
    "paragen-fuzz",
];

/// The longest a source file may be, in lines before its `#[cfg(test)]` module.
pub const MAX_CODE_LINES: usize = 600;

/// The crates that may choose a backend: the binary, and the fuzz targets' harness.
const PICKS_BACKENDS: [&str; 2] = ["paragen-cli", "paragen-fuzz"];

pub fn run() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let mut problems = Vec::new();
    for (rank, name) in LAYERS.iter().enumerate() {
        let dir = root.join("crates").join(name);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
            .with_context(|| format!("{name}/Cargo.toml"))?;
        for (other_rank, other) in LAYERS.iter().enumerate() {
            if other_rank >= rank && manifest_depends_on(&manifest, other) && other != name {
                problems.push(format!(
                    "{name} depends on {other}, which is above it in the layers"
                ));
            }
        }
        if rank > 0
            && !PICKS_BACKENDS.contains(name)
            && picks_a_backend(&dependencies_section(&manifest))
        {
            problems.push(format!(
                "{name} has paragen-backend as a normal dependency with its backends; \
                 libraries use it only in tests (move it to [dev-dependencies]) or with \
                 `default-features = false`"
            ));
        }
        for entry in ["src/lib.rs", "src/main.rs"] {
            check_crate_doc(&dir.join(entry), &mut problems);
        }
        check_file_lengths(&dir.join("src"), &mut problems);
    }
    check_crate_doc(&root.join("xtask/src/main.rs"), &mut problems);
    check_crate_doc(&root.join("benches/src/lib.rs"), &mut problems);
    if problems.is_empty() {
        eprintln!("tidy: ok");
        Ok(())
    } else {
        bail!("tidy found problems:\n  {}", problems.join("\n  "))
    }
}

fn manifest_depends_on(manifest: &str, krate: &str) -> bool {
    manifest.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with(&format!("{krate}."))
            || l.starts_with(&format!("{krate} "))
            || l.starts_with(&format!("{krate}="))
    })
}

/// Whether a `[dependencies]` table takes `paragen-backend` with its default features
/// (which compile backends in).
fn picks_a_backend(dependencies: &str) -> bool {
    dependencies.lines().any(|l| {
        let l = l.trim_start();
        manifest_depends_on(l, LAYERS[0]) && !l.contains("default-features = false")
    })
}

/// The `[dependencies]` table of a manifest (not dev- or build-dependencies).
fn dependencies_section(manifest: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == "[dependencies]";
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Lines of `text` before its test module.
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .count()
}

fn check_file_lengths(dir: &Path, problems: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            check_file_lengths(&path, problems);
        } else if path.extension().is_some_and(|e| e == "rs")
            && let Ok(text) = std::fs::read_to_string(&path)
            && code_lines(&text) > MAX_CODE_LINES
        {
            problems.push(format!(
                "{} has {} lines of code before its tests (at most {MAX_CODE_LINES}): split it",
                path.display(),
                code_lines(&text)
            ));
        }
    }
}

fn check_crate_doc(path: &Path, problems: &mut Vec<String>) {
    if let Ok(text) = std::fs::read_to_string(path)
        && !text.trim_start().starts_with("//!")
    {
        problems.push(format!(
            "{} does not start with a `//!` crate doc",
            path.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repository_is_tidy() {
        super::run().unwrap();
    }

    #[test]
    fn detects_an_upward_dependency() {
        assert!(super::manifest_depends_on(
            "[dependencies]\nparagen-train.workspace = true\n",
            "paragen-train"
        ));
        assert!(!super::manifest_depends_on(
            "[dependencies]\nparagen-training = \"1\"\n",
            "paragen-train"
        ));
    }

    #[test]
    fn only_normal_dependencies_and_code_before_tests_count() {
        let manifest = "[dependencies]\nburn = \"1\"\n\n[dev-dependencies]\nparagen-backend.workspace = true\n";
        let deps = super::dependencies_section(manifest);
        assert!(!super::manifest_depends_on(&deps, "paragen-backend"));
        assert!(super::manifest_depends_on(manifest, "paragen-backend"));
        assert!(!super::picks_a_backend(&deps));
        assert!(super::picks_a_backend("paragen-backend.workspace = true\n"));
        assert!(!super::picks_a_backend(
            "paragen-backend = { path = \"../paragen-backend\", default-features = false }\n"
        ));
        assert_eq!(super::code_lines("a\nb\n#[cfg(test)]\nmod tests {}\n"), 2);
    }
}
