//! Writes every target's seed inputs as cargo-fuzz's starting corpus:
//! `cargo run -p paragen-fuzz --example write_seeds -- fuzz/corpus`.

use paragen_fuzz::seeds;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    for (target, seeds) in seeds::by_target() {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}", dir.display());
    }
    Ok(())
}
