//! Secrets in request targets: the values of query parameters named like credentials
//! (`?sid=...&token=...`) are masked with `*`, length preserved, in every request line the
//! redactor sees (requests a portal reads, and requests it writes to internal services), and in
//! `Referer` and `Location` values. Names compare without regard to case; the list is
//! `capture.secret_query_parameters`.

/// The default list: session ids, tokens, API keys and passwords as portals name them.
pub const DEFAULT_NAMES: [&str; 6] = ["sid", "session", "token", "access_token", "key", "password"];

/// Masks, in `url` (a request target or a URL, possibly cut short by the capture), the values
/// of the query parameters named in `names`.
pub fn mask_url(url: &mut [u8], names: &[String]) {
    if let Some(q) = url.iter().position(|&b| b == b'?') {
        mask_query(&mut url[q + 1..], names);
    }
}

/// Masks, in query string `query` (what follows `?`, up to an optional `#fragment`), the values
/// of the parameters named in `names`.
pub fn mask_query(query: &mut [u8], names: &[String]) {
    let end = query.iter().position(|&b| b == b'#').unwrap_or(query.len());
    for pair in query[..end].split_mut(|&b| b == b'&' || b == b';') {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = pair.split_at_mut(eq);
        if names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        {
            value[1..].fill(b'*');
        }
    }
}

/// Masks the secret query parameters of the request line `line` (`METHOD target HTTP/x`,
/// possibly incomplete); other lines are left alone.
pub fn mask_request_line(line: &mut [u8], names: &[String]) {
    if !crate::http::looks_like_request_start(line) {
        return;
    }
    let Some(sp) = line.iter().position(|&b| b == b' ' || b == b'\t') else {
        return;
    };
    let target = &mut line[sp + 1..];
    // The target ends at the next blank; a line cut short by the capture ends with it.
    let end = target
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\r'))
        .unwrap_or(target.len());
    mask_url(&mut target[..end], names);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        DEFAULT_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn line(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        mask_request_line(&mut b, &names());
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn secret_parameters_are_masked_in_place() {
        assert_eq!(
            line("GET /session/check?sid=abc123&user=alice&Token=xyz HTTP/1.1\r"),
            "GET /session/check?sid=******&user=alice&Token=*** HTTP/1.1\r"
        );
        assert_eq!(
            line("POST /a?x=1;password=hunter2#frag=key HTTP/1.0"),
            "POST /a?x=1;password=*******#frag=key HTTP/1.0"
        );
        // Cut short by the capture: what is there is masked.
        assert_eq!(line("GET /a?access_token=ey"), "GET /a?access_token=**");
        // Names must match whole; other lines are left alone.
        assert_eq!(
            line("GET /a?sidebar=1&keys=2&key=3 HTTP/1.1"),
            "GET /a?sidebar=1&keys=2&key=* HTTP/1.1"
        );
        assert_eq!(line("Host: x?sid=1"), "Host: x?sid=1");
    }

    #[test]
    fn urls_in_header_values() {
        let mut v = b" https://portal/docs?session=s3cr3t".to_vec();
        mask_url(&mut v, &names());
        assert_eq!(v, b" https://portal/docs?session=******");
        let mut odd = b"?=&&=x&sid".to_vec();
        mask_url(&mut odd, &names());
        assert_eq!(odd, b"?=&&=x&sid");
    }
}
