//! The HTTP/1.x request-head parser and its helpers, on arbitrary socket bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::http::{self, HeadParse};

fuzz_target!(|data: &[u8]| {
    match http::parse_request_head(data) {
        HeadParse::Complete(head) => {
            assert!(head.head_len <= data.len(), "head_len past the buffer");
            assert!(head.minor_version <= 1);
            assert!(!head.method.is_empty());
            // A complete head starts with a complete request line.
            assert!(http::request_line(data).is_some());
            for (name, _) in &head.headers {
                assert_eq!(
                    *name,
                    name.to_ascii_lowercase(),
                    "header name not lowercased"
                );
                let _ = head.header(name);
            }
            // Parsing is a function of the head's bytes only: what follows does not matter.
            match http::parse_request_head(&data[..head.head_len]) {
                HeadParse::Complete(again) => assert_eq!(again, head),
                other => panic!("the head alone parses as {other:?}"),
            }
            let _ = format!("{head:?}");
        }
        HeadParse::Partial | HeadParse::Invalid(_) => {}
    }
    let _ = http::request_line(data);
    let _ = http::looks_like_request_start(data);
    if let Some(status) = http::response_status(data) {
        assert!((100..=599).contains(&status));
    }
});
