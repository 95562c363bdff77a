//! The trail commands' file side: `vigie verify` and `vigie trail-keygen` read and write the
//! files; the checks themselves are [`crate::trail::verify`]'s.
use std::{path::Path, path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::{
    cli::VerifyArgs,
    trail::{
        key::{PublicKey, TrailKey},
        verify::{Report, TrailFile, verify},
    },
};

/// Trail files named on the command line, directories expanded, in chain order.
pub fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let listed =
                crate::sinks::trail::list(p).with_context(|| format!("listing {}", p.display()))?;
            if listed.is_empty() {
                anyhow::bail!("{}: no trail-*.jsonl files", p.display());
            }
            files.extend(listed.into_iter().map(|(_, f)| f));
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Reads and verifies a trail.
pub fn verify_paths(paths: &[PathBuf], key: &PublicKey) -> anyhow::Result<Report> {
    let files = expand(paths)?;
    let contents = files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trail: Vec<TrailFile<'_>> = files
        .iter()
        .zip(&contents)
        .map(|(f, bytes)| TrailFile {
            name: f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            bytes,
        })
        .collect();
    Ok(verify(&trail, key))
}

pub fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PublicKey::parse(&text).with_context(|| path.display().to_string())
}

pub fn verify_command(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = match read_public_key(&args.key).and_then(|k| verify_paths(&args.trail, &k)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigie verify: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::from(report.outcome.exit_code()))
}

pub fn keygen_command(file: &Path) -> anyhow::Result<ExitCode> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = TrailKey::from_seed(seed);
    let public = PathBuf::from(format!("{}.pub", file.display()));
    let write = |path: &Path, mode: u32, text: &str| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    };
    write(file, 0o600, &key.to_file_text())?;
    write(&public, 0o644, &key.public().to_file_text())?;
    println!(
        "key id {}: secret in {} (0600, for [trail] key_file), public key in {} (for vigie verify)",
        key.key_id(),
        file.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}
