//! Validation of client-controlled values that are not JSON bodies: path parameters, answer
//! headers, lease groups, failure reasons.

use actix_web::http::header::HeaderMap;
use rjs_wire::api::{MAX_NODE_ID, MAX_OUTCOME, MAX_REASON};

use super::error::ApiError;

/// A job id path segment: a positive decimal integer.
pub fn job_id(segment: Option<&str>) -> Result<i64, ApiError> {
    let s = segment.unwrap_or_default();
    let ok = !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<i64>() {
        Ok(id) if ok && id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(
            "the job id must be a positive decimal integer",
        )),
    }
}

/// A bundle id: 64 lowercase hex digits.
pub fn bundle_id(s: &str) -> Result<&str, ApiError> {
    if crate::store::blobs::valid_blob_name(s) {
        Ok(s)
    } else {
        Err(ApiError::bad_request(
            "a bundle id is 64 lowercase hex digits",
        ))
    }
}

/// An outcome line: 1 to [`MAX_OUTCOME`] bytes, printable (no control characters).
pub fn outcome(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_OUTCOME && !s.chars().any(char::is_control) && s.trim() == s
}

/// A node id: `[A-Za-z0-9._-]{1,64}`, the names nodes announce ([`MAX_NODE_ID`]).
pub fn node_id(s: &str) -> bool {
    rjs_wire::announce::valid_name(s)
}

/// A failure reason: 1 to [`MAX_REASON`] bytes, no control characters.
pub fn reason(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= MAX_REASON && !s.chars().any(char::is_control)
}

/// Longest name filter (`?name=` of the submission lists), bytes.
pub const MAX_NAME_FILTER: usize = 200;

/// A name filter: at most [`MAX_NAME_FILTER`] bytes of text without control characters
/// (PostgreSQL's text refuses a NUL byte: refused here, before any store is asked, it gets
/// the same clear answer on every backend).
pub fn name_filter(s: &str) -> Result<&str, ApiError> {
    if s.len() > MAX_NAME_FILTER {
        return Err(ApiError::bad_request(format!(
            "name filter: at most {MAX_NAME_FILTER} bytes"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name filter: no control characters"));
    }
    Ok(s)
}

/// The one value of a header, as UTF-8 text. Missing: None. Repeated or not UTF-8: error.
pub fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!("header {name} is repeated")));
    }
    std::str::from_utf8(first.as_bytes())
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("header {name} is not UTF-8")))
}

/// The `rjs-outcome` and `rjs-node` headers of an answer upload.
pub fn answer_headers(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    use rjs_wire::api::{H_NODE, H_OUTCOME};
    let outcome_v = single_header(headers, H_OUTCOME)?
        .ok_or_else(|| ApiError::bad_request(format!("missing header {H_OUTCOME}")))?;
    if !outcome(outcome_v) {
        return Err(ApiError::bad_request(format!(
            "header {H_OUTCOME} must be one printable line of 1 to {MAX_OUTCOME} bytes"
        )));
    }
    let node_v = single_header(headers, H_NODE)?
        .ok_or_else(|| ApiError::bad_request(format!("missing header {H_NODE}")))?;
    if !node_id(node_v) {
        return Err(ApiError::bad_request(format!(
            "header {H_NODE} must match [A-Za-z0-9._-]{{1,{MAX_NODE_ID}}}"
        )));
    }
    Ok((outcome_v.to_owned(), node_v.to_owned()))
}

/// Whether an `If-None-Match` header value matches the entity tag `"<tag>"`.
pub fn if_none_match(value: &str, tag: &str) -> bool {
    value.split(',').map(str::trim).any(|t| {
        t == "*" || {
            let t = t.strip_prefix("W/").unwrap_or(t);
            t.len() == tag.len() + 2
                && t.starts_with('"')
                && t.ends_with('"')
                && &t[1..t.len() - 1] == tag
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    #[test]
    fn job_ids() {
        assert_eq!(job_id(Some("7")).unwrap(), 7);
        for bad in [
            None,
            Some(""),
            Some("0"),
            Some("-1"),
            Some("+1"),
            Some("1e3"),
            Some("99999999999999999999"),
            Some(" 1"),
        ] {
            assert!(job_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outcomes_and_nodes() {
        let check = |valid: fn(&str) -> bool, values: &[&str], ok: bool| {
            for s in values {
                assert_eq!(valid(s), ok, "{s:?}");
            }
        };
        let x = "x".repeat(MAX_OUTCOME);
        let good = [
            "exit 0",
            "trap: unreachable",
            "trap: wasm `unreachable` instruction executed …",
            &x,
        ];
        check(outcome, &good, true);
        let bad = [
            &*(x.clone() + "x"),
            "",
            "exit 0\nforged: yes",
            "a\tb",
            " exit 0",
        ];
        check(outcome, &bad, false);
        let n = "n".repeat(MAX_NODE_ID);
        check(node_id, &["node-1.lab_2", &n], true);
        check(
            node_id,
            &[&*(n.clone() + "n"), "", "node 1", "node/1", "nöde"],
            false,
        );
        check(reason, &["node lost"], true);
        check(reason, &[" ", "a\nb", &"r".repeat(MAX_REASON + 1)], false);
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn answer_header_checks() {
        let ok = headers(&[("rjs-outcome", b"exit 0"), ("rjs-node", b"n1")]);
        assert_eq!(
            answer_headers(&ok).unwrap(),
            ("exit 0".to_owned(), "n1".to_owned())
        );
        let utf8 = headers(&[
            ("rjs-outcome", "limit: time …".as_bytes()),
            ("rjs-node", b"n1"),
        ]);
        assert_eq!(answer_headers(&utf8).unwrap().0, "limit: time …");
        let cases: [&[(&str, &[u8])]; 5] = [
            &[("rjs-node", b"n1")],
            &[("rjs-outcome", b"exit 0")],
            &[("rjs-outcome", b"exit 0"), ("rjs-node", b"n 1")],
            &[("rjs-outcome", b"exit \xff"), ("rjs-node", b"n1")],
            &[
                ("rjs-outcome", b"a"),
                ("rjs-outcome", b"b"),
                ("rjs-node", b"n1"),
            ],
        ];
        for c in cases {
            let e = answer_headers(&headers(c)).unwrap_err();
            assert_eq!(e.code, "bad-request", "{c:?}");
        }
    }

    #[test]
    fn etags() {
        let id = "ab".repeat(32);
        assert!(if_none_match(&format!("\"{id}\""), &id));
        assert!(if_none_match(&format!("W/\"x\", \"{id}\""), &id));
        assert!(if_none_match("*", &id));
        assert!(!if_none_match(&id, &id));
        assert!(!if_none_match("\"other\"", &id));
    }
}
