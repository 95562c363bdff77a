//! The demo document tree (`--generate`).

use std::fs;
use std::io;
use std::path::Path;

/// The demo users, each owning every document of [`DOCUMENTS`].
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The documents each user owns, at `ROOT/users/<user>/<document>`.
pub const DOCUMENTS: [&str; 3] = ["health-record.pdf", "disability-file.pdf", "notes.txt"];

/// (Re)creates `ROOT/users`, `ROOT/public/welcome.txt` and `ROOT/portal.db`. Anything else
/// under ROOT is left alone.
pub fn generate(root: &Path) -> io::Result<()> {
    for area in ["users", "public"] {
        match fs::remove_dir_all(root.join(area)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    for owner in USERS {
        let dir = root.join("users").join(owner);
        fs::create_dir_all(&dir)?;
        for name in DOCUMENTS {
            fs::write(dir.join(name), document_content(owner, name))?;
        }
    }
    fs::create_dir_all(root.join("public"))?;
    fs::write(
        root.join("public/welcome.txt"),
        "Welcome to the Vigie demo portal.\n",
    )?;
    fs::write(root.join("portal.db"), portal_db_content())?;
    Ok(())
}

/// The generated content of `owner`'s document `name`: text naming both on every line, of a
/// size distinct per document (2 100 to 20 000 bytes, so some take two 16 KiB reads).
#[must_use]
pub fn document_content(owner: &str, name: &str) -> Vec<u8> {
    let owner_rank = USERS
        .iter()
        .position(|u| *u == owner)
        .unwrap_or(USERS.len());
    let base = match name {
        "health-record.pdf" => 5_000,
        "disability-file.pdf" => 11_000,
        "notes.txt" => 2_100,
        _ => 3_000,
    };
    let size = base + 4_500 * owner_rank;
    let mut content =
        format!("VIGIE DEMO DOCUMENT owner={owner} name={name} size={size}\n").into_bytes();
    let mut line = 0;
    while content.len() < size {
        line += 1;
        content.extend_from_slice(
            format!("{owner}/{name} line {line:04}: confidential to {owner}, never to be shown to anyone else.\n")
                .as_bytes(),
        );
    }
    content.truncate(size);
    content
}

/// 8 KiB of fake session rows, so that each request's 4 KiB read of it is a full one.
fn portal_db_content() -> Vec<u8> {
    let mut db = Vec::with_capacity(8192);
    let mut row = 0;
    while db.len() < 8192 {
        db.extend_from_slice(
            format!(
                "session {row:05} user={} active\n",
                USERS[row % USERS.len()]
            )
            .as_bytes(),
        );
        row += 1;
    }
    db.truncate(8192);
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_distinct_and_sized() {
        let mut seen = Vec::new();
        for owner in USERS {
            for name in DOCUMENTS {
                let content = document_content(owner, name);
                assert!(
                    (2_000..=20_000).contains(&content.len()),
                    "{owner}/{name}: {}",
                    content.len()
                );
                assert!(!seen.contains(&content.len()), "sizes must differ");
                seen.push(content.len());
            }
        }
        assert!(
            seen.iter().any(|&len| len > 16 * 1024),
            "one document needs two 16 KiB reads"
        );
    }
}
