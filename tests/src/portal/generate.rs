//! The demo document tree (`--generate`).

use std::fs;
use std::io;
use std::path::Path;

/// The demo users, each owning every document of [`DOCUMENTS`].
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The documents each user owns, at `ROOT/users/<user>/<document>`.
pub const DOCUMENTS: [&str; 3] = ["health-record.pdf", "disability-file.pdf", "notes.txt"];

/// Documents stored by id, at `ROOT/docs/<id>.pdf` and served at `/api/documents/<id>`: (id,
/// owner, principals it is shared with). Who owns them is only in `portal.db`'s `documents`
/// table, never in the path.
pub const API_DOCUMENTS: [(u32, &str, &[&str]); 5] = [
    (1001, "alice", &[]),
    (1002, "alice", &["carol"]),
    (2001, "bob", &[]),
    (2002, "bob", &["alice"]),
    (3001, "carol", &[]),
];

/// A document stored by id that `portal.db` does not list: nobody is known to own it.
pub const ORPHAN_DOCUMENT: u32 = 9001;

/// (Re)creates `ROOT/users`, `ROOT/docs`, `ROOT/public/welcome.txt` and `ROOT/portal.db`.
/// Anything else under ROOT is left alone.
pub fn generate(root: &Path) -> io::Result<()> {
    for area in ["users", "public", "docs"] {
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
    fs::create_dir_all(root.join("docs"))?;
    for (id, owner, _) in API_DOCUMENTS {
        let name = format!("{id}.pdf");
        fs::write(
            root.join("docs").join(&name),
            document_content(owner, &name),
        )?;
    }
    let orphan = format!("{ORPHAN_DOCUMENT}.pdf");
    fs::write(
        root.join("docs").join(&orphan),
        document_content("nobody", &orphan),
    )?;
    write_portal_db(&root.join("portal.db"))
}

/// `portal.db`: a real SQLite database, as a portal would keep: `documents(id, owner,
/// shared_with)` (shared_with: comma-separated user names, or NULL) and enough `sessions` rows
/// that each request's 4 KiB read of the file is a full one. Written aside, then renamed.
fn write_portal_db(path: &Path) -> io::Result<()> {
    let tmp = path.with_extension("db.tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let db = rusqlite::Connection::open(&tmp).map_err(io::Error::other)?;
    let mut sql = String::from(
        "BEGIN;
         CREATE TABLE documents (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, shared_with TEXT);
         CREATE TABLE sessions (id INTEGER PRIMARY KEY, user TEXT NOT NULL, active INTEGER);\n",
    );
    for (id, owner, shared) in API_DOCUMENTS {
        let shared = match shared {
            [] => "NULL".to_owned(),
            s => format!("'{}'", s.join(",")),
        };
        sql.push_str(&format!(
            "INSERT INTO documents VALUES ({id}, '{owner}', {shared});\n"
        ));
    }
    for row in 0..256 {
        let user = USERS[row % USERS.len()];
        sql.push_str(&format!(
            "INSERT INTO sessions VALUES ({row}, '{user}', 1);\n"
        ));
    }
    sql.push_str("COMMIT;");
    db.execute_batch(&sql).map_err(io::Error::other)?;
    drop(db);
    fs::rename(&tmp, path)
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

    #[test]
    fn generated_tree_has_documents_by_id_and_a_real_portal_db() {
        let root = std::env::temp_dir().join(format!("vigie-generate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        generate(&root).unwrap();
        generate(&root).unwrap();
        for (id, owner, _) in API_DOCUMENTS {
            let content = fs::read(root.join(format!("docs/{id}.pdf"))).unwrap();
            assert_eq!(content, document_content(owner, &format!("{id}.pdf")));
        }
        assert!(root.join(format!("docs/{ORPHAN_DOCUMENT}.pdf")).is_file());
        let db_path = root.join("portal.db");
        assert!(fs::metadata(&db_path).unwrap().len() >= 8192);
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let shared: Option<String> = db
            .query_row(
                "SELECT shared_with FROM documents WHERE id = 2002",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(shared.as_deref(), Some("alice"));
        let n: u32 = db
            .query_row("SELECT count(*) FROM documents", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, API_DOCUMENTS.len());
        let _ = fs::remove_dir_all(&root);
    }
}
