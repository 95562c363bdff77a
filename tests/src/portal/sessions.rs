//! Cookie sessions, stored as files as PHP does (or in Redis with `--session-redis`):
//! `POST /login` with the form `user=<name>&password=<name>-pw` creates `ROOT/sessions/<id>`
//! (or the Redis key `session:<id>`) holding the user name and sets the cookie `session=<id>`.
//! Every worker process reads the same store, so a session made by one worker serves requests
//! handled by another.
//!
//! `/logout` clears the cookie in the browser but, a bug on purpose, leaves the session file in
//! place: whoever kept the old cookie is still logged in, as far as the portal is concerned.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Context;
use super::http::{Request, valid_user};

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "session";

fn dir(root: &Path) -> PathBuf {
    root.join("sessions")
}

/// Checks the form's credentials and creates a session; returns its id.
pub(crate) fn login(ctx: &Context, form: &[u8]) -> io::Result<Option<String>> {
    let field = |name: &str| {
        form.split(|&b| b == b'&').find_map(|pair| {
            let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (k == name.as_bytes()).then(|| String::from_utf8_lossy(&v[1..]).into_owned())
        })
    };
    let (Some(user), Some(password)) = (field("user"), field("password")) else {
        return Ok(None);
    };
    if !valid_user(&user) || password != format!("{user}-pw") {
        return Ok(None);
    }
    let mut raw = [0u8; 16];
    // SAFETY: `raw` is valid for writes of its length.
    let n = unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) };
    if usize::try_from(n).ok() != Some(raw.len()) {
        return Err(io::Error::last_os_error());
    }
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    match &ctx.session_redis {
        Some(client) => {
            let mut conn = client.get_connection().map_err(io::Error::other)?;
            redis::cmd("SET")
                .arg(format!("session:{id}"))
                .arg(&user)
                .exec(&mut conn)
                .map_err(io::Error::other)?;
        }
        None => {
            fs::create_dir_all(dir(&ctx.root))?;
            fs::write(dir(&ctx.root).join(&id), &user)?;
        }
    }
    Ok(Some(id))
}

/// The user of the request's session cookie, if its session exists.
pub(crate) fn user(ctx: &Context, request: &Request) -> Option<String> {
    let cookies = std::str::from_utf8(request.header("cookie")?).ok()?;
    let id = cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE).then_some(value)
    })?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let user = match &ctx.session_redis {
        Some(client) => {
            let mut conn = client.get_connection().ok()?;
            redis::cmd("GET")
                .arg(format!("session:{id}"))
                .query::<Option<String>>(&mut conn)
                .ok()??
        }
        None => fs::read_to_string(dir(&ctx.root).join(id)).ok()?,
    };
    valid_user(&user).then_some(user)
}
