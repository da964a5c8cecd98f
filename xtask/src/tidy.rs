//! `cargo xtask tidy`: repository rules that no compiler checks.
//!
//! - every crate's `lib.rs` / `main.rs` starts with a `//!` crate doc;
//! - paragen crates depend on each other only in the direction of the layers
//!   (backend <- data <- models <- train <- cli); see docs/architecture.md.

use std::path::Path;

use anyhow::{Context, bail};

/// The layers, lowest first. A crate may depend only on crates before it.
pub const LAYERS: [&str; 6] = [
    "paragen-backend",
    "paragen-data",
    "paragen-models",
    "paragen-train",
    "paragen-compress",
    "paragen-cli",
];

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
        for entry in ["src/lib.rs", "src/main.rs"] {
            check_crate_doc(&dir.join(entry), &mut problems);
        }
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
}
