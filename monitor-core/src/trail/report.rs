//! `vigie report`: answers over the access records of a trail. Per data subject (every access
//! to documents a person owns: a GDPR right-of-access answer), per user (everything an account
//! read), and breach scoping (every cross-user read between two times, grouped by affected
//! owner: the notification list), optionally re-judged by the caller under a corrected
//! ownership config. Rendered as a terminal table, CSV, JSON or one self-contained HTML page.
//! Pure: records come in parsed, text goes out.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::record::{AccessRecord, parse_link};

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Every access to documents owned by this person.
    Subject(String),
    /// Everything this account read.
    User(String),
    /// Every cross-user read (verdict `violation`) in the window, grouped by owner.
    Breach,
}

/// A time window on the records' RFC 3339 times (`[since, until)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Window {
    /// Records' times are fixed-width UTC (`...ffffffZ`), so they order as strings; the bounds
    /// are normalized the same way by the caller.
    fn contains(&self, time: &str) -> bool {
        self.since.as_deref().is_none_or(|s| time >= s)
            && self.until.as_deref().is_none_or(|u| time < u)
    }
}

/// One line of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub time: String,
    pub verdict: String,
    pub user: Option<String>,
    pub owner: Option<String>,
    pub document: String,
    pub request: Option<String>,
    pub process: String,
    pub access_id: u64,
    /// Set when re-judged and the verdict changed: the verdict recorded live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_verdict: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub title: String,
    pub window: [Option<String>; 2],
    pub rows: Vec<Row>,
    /// Breach scoping: owner -> rows (the notification list).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_owner: BTreeMap<String, Vec<Row>>,
    /// Re-judged under another config.
    pub rejudged: bool,
    /// The trail's own verdict on itself (`verify`'s first line).
    pub integrity: String,
}

/// The access records among trail lines (other kinds skipped, unreadable lines counted).
pub fn access_records(
    lines: impl IntoIterator<Item = impl AsRef<[u8]>>,
) -> (Vec<AccessRecord>, u64) {
    let mut out = Vec::new();
    let mut unreadable = 0;
    for line in lines {
        match access_record(line.as_ref()) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(Unreadable) => unreadable += 1,
        }
    }
    (out, unreadable)
}

/// A trail line that is not a record (or an access record that does not parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// The access record of one trail line (None: a record of another kind).
pub fn access_record(line: &[u8]) -> Result<Option<AccessRecord>, Unreadable> {
    match parse_link(line) {
        Ok(link) if link.kind == b"access" => serde_json::from_slice(line)
            .map(Some)
            .map_err(|_| Unreadable),
        Ok(_) => Ok(None),
        Err(_) => Err(Unreadable),
    }
}

/// The access of one line of a replay's alert file (`report --trace`): None for its other lines
/// (enumeration alerts, coverage gaps), which are not accesses.
pub fn replayed_access(line: &[u8]) -> Result<Option<AccessRecord>, Unreadable> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let kind: Kind = serde_json::from_slice(line).map_err(|_| Unreadable)?;
    match kind.kind.as_deref() {
        Some("access") => serde_json::from_slice(line)
            .map(Some)
            .map_err(|_| Unreadable),
        Some(_) => Ok(None),
        None => Err(Unreadable),
    }
}

/// Whether [`answer`] may keep `r`, so that a reader can drop the others as it goes: in the
/// window and, unless re-judging may change its owner and verdict, matching the query (the
/// user never changes).
pub fn may_keep(r: &AccessRecord, query: &Query, window: &Window, rejudged: bool) -> bool {
    if !window.contains(&r.time) {
        return false;
    }
    match query {
        Query::User(who) => r.user.as_deref() == Some(who.as_str()),
        _ if rejudged => true,
        Query::Subject(who) => r.owner.as_deref() == Some(who.as_str()),
        Query::Breach => r.verdict == "violation",
    }
}

/// A corrected config's (verdict, owner) for a recorded access.
pub type Rejudge<'a> = &'a dyn Fn(&AccessRecord) -> (String, Option<String>);

/// Answers `query` over `records` in `window`. `rejudge`, when given, returns the (verdict,
/// owner) a corrected config gives an access.
pub fn answer(
    records: &[AccessRecord],
    query: &Query,
    window: &Window,
    rejudge: Option<Rejudge<'_>>,
    integrity: String,
) -> Answer {
    let mut rows = Vec::new();
    for r in records.iter().filter(|r| window.contains(&r.time)) {
        let (verdict, owner, recorded) = match rejudge {
            Some(f) => {
                let (v, o) = f(r);
                let changed = (v != r.verdict).then(|| r.verdict.clone());
                (v, o, changed)
            }
            None => (r.verdict.clone(), r.owner.clone(), None),
        };
        let keep = match query {
            Query::Subject(who) => owner.as_deref() == Some(who.as_str()),
            Query::User(who) => r.user.as_deref() == Some(who.as_str()),
            Query::Breach => verdict == "violation",
        };
        if !keep {
            continue;
        }
        rows.push(Row {
            time: r.time.clone(),
            verdict,
            user: r.user.clone(),
            owner,
            document: r.document.clone(),
            request: r
                .request
                .as_ref()
                .map(|q| format!("{} {}", q.method, q.target)),
            process: format!("{} ({})", r.comm, r.pid),
            access_id: r.access_id,
            recorded_verdict: recorded,
        });
    }
    rows.sort_by(|a, b| a.time.cmp(&b.time).then(a.access_id.cmp(&b.access_id)));
    let mut by_owner: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    if *query == Query::Breach {
        for row in &rows {
            let owner = row
                .owner
                .clone()
                .unwrap_or_else(|| "(unknown owner)".into());
            by_owner.entry(owner).or_default().push(row.clone());
        }
    }
    let title = match query {
        Query::Subject(who) => format!("Accesses to documents owned by {who}"),
        Query::User(who) => format!("Documents read by {who}"),
        Query::Breach => "Cross-user reads, by affected owner".to_string(),
    };
    Answer {
        title,
        window: [window.since.clone(), window.until.clone()],
        rows,
        by_owner,
        rejudged: rejudge.is_some(),
        integrity,
    }
}

const COLUMNS: [&str; 7] = [
    "time", "verdict", "user", "owner", "document", "request", "process",
];

fn cells(r: &Row) -> [String; 7] {
    let verdict = match &r.recorded_verdict {
        Some(was) => format!("{} (was {was})", r.verdict),
        None => r.verdict.clone(),
    };
    [
        r.time.clone(),
        verdict,
        r.user.clone().unwrap_or_else(|| "-".into()),
        r.owner.clone().unwrap_or_else(|| "-".into()),
        r.document.clone(),
        r.request.clone().unwrap_or_else(|| "-".into()),
        r.process.clone(),
    ]
}

/// A terminal table: aligned columns; for breach scoping, one block per owner.
pub fn table(a: &Answer) -> String {
    let mut out = format!("{}\n{}\n", a.title, a.integrity);
    let block = |rows: &[Row], out: &mut String| {
        let cells: Vec<[String; 7]> = rows.iter().map(cells).collect();
        let mut width = COLUMNS.map(str::len);
        for c in &cells {
            for (w, s) in width.iter_mut().zip(c) {
                *w = (*w).max(s.chars().count());
            }
        }
        let line = |c: &[String], out: &mut String| {
            let padded: Vec<String> = c
                .iter()
                .zip(width)
                .map(|(s, w)| format!("{s:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        line(&COLUMNS.map(String::from), out);
        for c in &cells {
            line(c, out);
        }
    };
    if a.by_owner.is_empty() {
        block(&a.rows, &mut out);
    } else {
        for (owner, rows) in &a.by_owner {
            let _ = writeln!(out, "\n{owner}: {} cross-user reads", rows.len());
            block(rows, &mut out);
        }
    }
    let _ = writeln!(out, "\n{} accesses", a.rows.len());
    out
}

/// CSV with a header (owner first, so a breach list sorts by who to notify).
pub fn csv(a: &Answer) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "owner",
        "time",
        "verdict",
        "recorded_verdict",
        "user",
        "document",
        "request",
        "process",
        "access_id",
    ])?;
    let mut rows: Vec<&Row> = a.rows.iter().collect();
    if !a.by_owner.is_empty() {
        rows = a.by_owner.values().flatten().collect();
    }
    for r in rows {
        w.write_record([
            r.owner.as_deref().unwrap_or(""),
            &r.time,
            &r.verdict,
            r.recorded_verdict.as_deref().unwrap_or(""),
            r.user.as_deref().unwrap_or(""),
            &r.document,
            r.request.as_deref().unwrap_or(""),
            &r.process,
            &r.access_id.to_string(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// HTML-escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the epoch of a record time, for placing it on a timeline.
fn seconds(time: &str) -> f64 {
    crate::walltime::parse_rfc3339(time).map_or(0.0, |ns| ns as f64 / 1e9)
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
.integrity{padding:.5em;background:#eef;border-left:4px solid #446}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}\
.violation{color:#b00;font-weight:600}.allowed{color:#070}\
.lane{display:flex;align-items:center;margin:3px 0}.lane .name{width:22em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}\
.track{position:relative;flex:1;height:14px;background:#f2f2f2;border-radius:3px}\
.dot{position:absolute;top:2px;width:10px;height:10px;border-radius:50%;margin-left:-5px;background:#070}\
.dot.violation{background:#b00}.dot.other{background:#c80}.axis{display:flex;justify-content:space-between;color:#666;font-size:12px;margin-left:22em}";

/// One self-contained page (no scripts, no external resources): the answer's table, and a
/// timeline per document and per user.
pub fn html(a: &Answer) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&a.title)
    );
    let _ = write!(out, "<h1>{}</h1>", esc(&a.title));
    let window = match (&a.window[0], &a.window[1]) {
        (None, None) => "all records".to_string(),
        (s, u) => format!(
            "from {} until {}",
            s.as_deref().unwrap_or("the start"),
            u.as_deref().unwrap_or("the end")
        ),
    };
    let _ = write!(
        out,
        "<p>{} accesses, {}{}.</p><p class=\"integrity\">Trail integrity: {}</p>",
        a.rows.len(),
        esc(&window),
        if a.rejudged {
            ", re-judged under the corrected ownership config"
        } else {
            ""
        },
        esc(&a.integrity)
    );
    let (t0, t1) = a.rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
        let t = seconds(&r.time);
        (lo.min(t), hi.max(t))
    });
    let span = (t1 - t0).max(1.0);
    let lanes = |title: &str, key: &dyn Fn(&Row) -> String, out: &mut String| {
        let mut groups: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
        for r in &a.rows {
            groups.entry(key(r)).or_default().push(r);
        }
        let _ = write!(out, "<h2>{}</h2>", esc(title));
        for (name, rows) in &groups {
            // Long paths keep their end (the file name), the whole path is the tooltip.
            let chars: Vec<char> = name.chars().collect();
            let shown = if chars.len() > 40 {
                format!("…{}", chars[chars.len() - 39..].iter().collect::<String>())
            } else {
                name.clone()
            };
            let _ = write!(
                out,
                "<div class=\"lane\"><span class=\"name\" title=\"{}\">{}</span><div class=\"track\">",
                esc(name),
                esc(&shown)
            );
            for r in rows {
                let class = match r.verdict.as_str() {
                    "violation" => "violation",
                    "allowed" => "",
                    _ => "other",
                };
                let _ = write!(
                    out,
                    "<span class=\"dot {class}\" style=\"left:{:.2}%\" title=\"{}\"></span>",
                    (seconds(&r.time) - t0) / span * 100.0,
                    esc(&format!(
                        "{} {} {} read {} ({})",
                        r.time,
                        r.verdict,
                        r.user.as_deref().unwrap_or("-"),
                        r.document,
                        r.owner.as_deref().unwrap_or("-")
                    ))
                );
            }
            let _ = write!(out, "</div></div>");
        }
        if let (Some(first), Some(last)) = (a.rows.first(), a.rows.last()) {
            let _ = write!(
                out,
                "<div class=\"axis\"><span>{}</span><span>{}</span></div>",
                esc(&first.time),
                esc(&last.time)
            );
        }
    };
    if !a.rows.is_empty() {
        lanes("Timeline per document", &|r| r.document.clone(), &mut out);
        lanes(
            "Timeline per user",
            &|r| r.user.clone().unwrap_or_else(|| "(no user)".into()),
            &mut out,
        );
    }
    let table = |rows: &[Row], out: &mut String| {
        let _ = write!(out, "<table><tr>");
        for c in COLUMNS {
            let _ = write!(out, "<th>{c}</th>");
        }
        let _ = write!(out, "</tr>");
        for r in rows {
            let _ = write!(out, "<tr>");
            for (i, c) in cells(r).iter().enumerate() {
                let class = if i == 1 { r.verdict.as_str() } else { "" };
                let _ = write!(out, "<td class=\"{}\">{}</td>", esc(class), esc(c));
            }
            let _ = write!(out, "</tr>");
        }
        let _ = write!(out, "</table>");
    };
    if a.by_owner.is_empty() {
        let _ = write!(out, "<h2>Accesses</h2>");
        table(&a.rows, &mut out);
    } else {
        let _ = write!(out, "<h2>Affected owners</h2>");
        for (owner, rows) in &a.by_owner {
            let _ = write!(
                out,
                "<h3>{}: {} cross-user reads</h3>",
                esc(owner),
                rows.len()
            );
            table(rows, &mut out);
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trail::record::RequestLine;

    #[test]
    fn a_replays_alert_file_gives_its_accesses_and_skips_its_other_lines() {
        let access = serde_json::json!({
            "schema": "vigie.alert/1", "type": "access", "time": "2026-12-03T10:00:00Z",
            "verdict": "violation", "user": "bob", "owner": "alice",
            "document": "/srv/docs/alice/a.pdf", "pid": 7, "tid": 7, "comm": "portal",
            "request": null, "evidence": [], "bytes": 10, "rule": "owner", "access_id": 3,
        });
        let r = replayed_access(access.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((r.user.as_deref(), r.access_id), (Some("bob"), 3));
        for other in [
            r#"{"schema":"vigie.alert/1","type":"coverage_gap","time":"t","reason":"lost","lost_events":2}"#,
            r#"{"schema":"vigie.alert/1","type":"enumeration","time":"t","user":"bob"}"#,
        ] {
            assert_eq!(replayed_access(other.as_bytes()), Ok(None), "{other}");
        }
        for bad in [
            &b"not json"[..],
            br#"{"no":"type"}"#,
            br#"{"type":"access"}"#,
        ] {
            assert_eq!(replayed_access(bad), Err(Unreadable));
        }
    }

    fn rec(time: &str, verdict: &str, user: &str, owner: &str, id: u64) -> AccessRecord {
        AccessRecord {
            time: time.into(),
            verdict: verdict.into(),
            user: Some(user.into()),
            identity_source: None,
            owner: Some(owner.into()),
            document: format!("/srv/users/{owner}/d{id}.pdf"),
            pid: 7,
            comm: "portal".into(),
            request: Some(RequestLine {
                method: "GET".into(),
                target: format!("/docs/{owner}/d{id}.pdf"),
                identity: None,
            }),
            rule: "x".into(),
            access_id: id,
            bytes: 1,
        }
    }

    fn records() -> Vec<AccessRecord> {
        vec![
            rec(
                "2026-12-03T10:00:00.000000Z",
                "allowed",
                "alice",
                "alice",
                1,
            ),
            rec(
                "2026-12-03T10:05:00.000000Z",
                "violation",
                "bob",
                "alice",
                2,
            ),
            rec(
                "2026-12-03T10:10:00.000000Z",
                "violation",
                "carol",
                "dave",
                3,
            ),
            rec(
                "2026-12-03T11:00:00.000000Z",
                "violation",
                "bob",
                "alice",
                4,
            ),
            rec("2026-12-03T09:00:00.000000Z", "allowed", "bob", "bob", 5),
        ]
    }

    #[test]
    fn subject_user_and_breach() {
        let r = records();
        let w = Window::default();
        let ids = |a: &Answer| a.rows.iter().map(|r| r.access_id).collect::<Vec<_>>();
        assert_eq!(
            ids(&answer(
                &r,
                &Query::Subject("alice".into()),
                &w,
                None,
                "ok".into()
            )),
            [1, 2, 4]
        );
        assert_eq!(
            ids(&answer(
                &r,
                &Query::User("bob".into()),
                &w,
                None,
                "ok".into()
            )),
            [5, 2, 4]
        );
        let window = Window {
            since: Some("2026-12-03T10:00:00.000000Z".into()),
            until: Some("2026-12-03T11:00:00.000000Z".into()),
        };
        let b = answer(&r, &Query::Breach, &window, None, "ok".into());
        assert_eq!(ids(&b), [2, 3]);
        assert_eq!(b.by_owner.keys().collect::<Vec<_>>(), ["alice", "dave"]);
        let t = table(&b);
        assert!(
            t.contains("alice: 1 cross-user reads") && t.contains("dave: 1"),
            "{t}"
        );
        let c = csv(&b).unwrap();
        assert_eq!(c.lines().count(), 3, "{c}");
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .starts_with("alice,2026-12-03T10:05:00"),
            "{c}"
        );
    }

    #[test]
    fn rejudged_under_a_corrected_config() {
        let r = records();
        // The correction: dave's documents belong to carol's team folder, so carol may read them.
        let fix = |a: &AccessRecord| -> (String, Option<String>) {
            if a.owner.as_deref() == Some("dave") {
                ("allowed".into(), Some("carol".into()))
            } else {
                (a.verdict.clone(), a.owner.clone())
            }
        };
        let b = answer(
            &r,
            &Query::Breach,
            &Window::default(),
            Some(&fix),
            "ok".into(),
        );
        assert_eq!(b.by_owner.keys().collect::<Vec<_>>(), ["alice"]);
        let s = answer(
            &r,
            &Query::Subject("carol".into()),
            &Window::default(),
            Some(&fix),
            "ok".into(),
        );
        assert_eq!(s.rows[0].recorded_verdict.as_deref(), Some("violation"));
        assert!(table(&s).contains("allowed (was violation)"));
    }

    #[test]
    fn html_is_escaped_and_self_contained() {
        let mut r = records();
        r[1].document = "/srv/users/alice/<script>alert(1)</script>.pdf".into();
        let h = html(&answer(
            &r,
            &Query::Breach,
            &Window::default(),
            None,
            "OK".into(),
        ));
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;"));
        assert!(!h.contains("http://") && !h.contains("https://") && !h.contains(" src="));
        assert!(h.contains("Timeline per document") && h.contains("Timeline per user"));
    }

    #[test]
    fn only_access_lines_are_read() {
        let p = "00".repeat(32);
        let lines = [
            format!("{{\"seq\":0,\"prev\":\"{p}\",\"type\":\"file\",\"time\":\"t\"}}"),
            format!(
                "{{\"seq\":1,\"prev\":\"{p}\",\"type\":\"access\",\"time\":\"t\",\"verdict\":\"allowed\",\"user\":\"a\",\"owner\":\"a\",\"document\":\"/d\",\"pid\":1,\"comm\":\"c\",\"request\":null,\"rule\":\"r\",\"access_id\":1}}"
            ),
            "garbage".to_string(),
            format!("{{\"seq\":2,\"prev\":\"{p}\",\"type\":\"access\",\"time\":1}}"),
        ];
        let (recs, bad) = access_records(&lines);
        assert_eq!((recs.len(), bad), (1, 2));
    }

    #[test]
    fn dropping_what_may_not_be_kept_changes_no_answer() {
        let all = records();
        let window = Window {
            since: Some("2026-12-03T09:30:00.000000Z".into()),
            until: Some("2026-12-03T10:30:00.000000Z".into()),
        };
        // A corrected config that makes every access alice's and a violation.
        let fix: Rejudge<'_> = &|_| ("violation".into(), Some("alice".into()));
        for query in [
            Query::Subject("alice".into()),
            Query::User("bob".into()),
            Query::Breach,
        ] {
            for w in [Window::default(), window.clone()] {
                for rejudge in [None, Some(fix)] {
                    let kept: Vec<AccessRecord> = all
                        .iter()
                        .filter(|r| may_keep(r, &query, &w, rejudge.is_some()))
                        .cloned()
                        .collect();
                    assert_eq!(
                        answer(&kept, &query, &w, rejudge, String::new()),
                        answer(&all, &query, &w, rejudge, String::new()),
                        "{query:?} {w:?} rejudged: {}",
                        rejudge.is_some()
                    );
                    if rejudge.is_none() && query == Query::Subject("alice".into()) {
                        assert!(kept.len() < all.len());
                    }
                }
            }
        }
    }
}
