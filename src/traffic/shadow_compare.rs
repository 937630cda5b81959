//! Comparing a shadow's answer with the primary's: status, chosen headers and body (byte for
//! byte, or as JSON with some fields ignored). A mismatch is kept with a unified diff of the
//! two answers written as text (status line, compared headers, body; JSON pretty-printed with
//! sorted keys so the diff shows fields, not reordering).

use bytes::Bytes;
use serde_json::Value;

use crate::config::traffic::{BodyComparison, ComparePlan};

/// One answer as compared: the primary's or the shadow's.
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [Bytes],
    /// The body was longer than `compare.max_body`: it is not compared.
    pub body_truncated: bool,
}

/// What differed, for the diffs endpoint.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// `status`, `header:<name>`, `body`.
    pub differences: Vec<String>,
    pub unified_diff: String,
}

/// `None` when the answers agree on everything `plan` compares.
pub fn compare(plan: &ComparePlan, primary: &Answer, shadow: &Answer) -> Option<Mismatch> {
    let mut differences = Vec::new();
    if plan.status && primary.status != shadow.status {
        differences.push("status".to_string());
    }
    for name in &plan.headers {
        if header_text(primary.headers, name) != header_text(shadow.headers, name) {
            differences.push(format!("header:{name}"));
        }
    }
    let bodies_compared =
        plan.body != BodyComparison::None && !primary.body_truncated && !shadow.body_truncated;
    let primary_body = bodies_compared.then(|| body_text(plan, primary.body));
    let shadow_body = bodies_compared.then(|| body_text(plan, shadow.body));
    if primary_body != shadow_body {
        differences.push("body".to_string());
    }
    if differences.is_empty() {
        return None;
    }
    let render = |answer: &Answer, body: Option<&String>| {
        let mut text = String::new();
        if plan.status {
            text.push_str(&format!("status: {}\n", answer.status));
        }
        for name in &plan.headers {
            text.push_str(&format!(
                "{name}: {}\n",
                header_text(answer.headers, name).unwrap_or_else(|| "(absent)".to_string())
            ));
        }
        if let Some(body) = body {
            text.push('\n');
            text.push_str(body);
            if !body.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    };
    let primary_text = render(primary, primary_body.as_ref());
    let shadow_text = render(shadow, shadow_body.as_ref());
    let unified_diff = similar::TextDiff::from_lines(&primary_text, &shadow_text)
        .unified_diff()
        .context_radius(3)
        .header("primary", "shadow")
        .to_string();
    Some(Mismatch {
        differences,
        unified_diff,
    })
}

/// Every value of `name`, joined as HTTP would fold them.
fn header_text(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The body as compared and shown: normalised JSON when asked for and it parses, else the
/// bytes as text (or a digest line for binary bodies).
fn body_text(plan: &ComparePlan, chunks: &[Bytes]) -> String {
    let bytes: Vec<u8> = chunks
        .iter()
        .flat_map(|chunk| chunk.iter().copied())
        .collect();
    if plan.body == BodyComparison::Json
        && let Ok(mut value) = serde_json::from_slice::<Value>(&bytes)
    {
        for path in &plan.ignore_fields {
            remove_field(&mut value, path);
        }
        // serde_json's map keeps keys sorted, so equal objects print alike.
        return serde_json::to_string_pretty(&value).unwrap_or_default();
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let bytes = error.into_bytes();
            let digest =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes));
            let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("(binary body, {} bytes, sha256 {hex})", bytes.len())
        }
    }
}

/// Removes the field at `path` (`*` matches every key or element) from `value`.
fn remove_field(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(map) => {
            if rest.is_empty() {
                if first == "*" {
                    map.clear();
                } else {
                    map.remove(first);
                }
            } else if first == "*" {
                for child in map.values_mut() {
                    remove_field(child, rest);
                }
            } else if let Some(child) = map.get_mut(first) {
                remove_field(child, rest);
            }
        }
        Value::Array(items) => {
            if first == "*" {
                for item in items.iter_mut() {
                    if rest.is_empty() {
                        *item = Value::Null;
                    } else {
                        remove_field(item, rest);
                    }
                }
            } else if let Ok(index) = first.parse::<usize>()
                && let Some(item) = items.get_mut(index)
            {
                if rest.is_empty() {
                    *item = Value::Null;
                } else {
                    remove_field(item, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(body: BodyComparison, ignore: &[&str]) -> ComparePlan {
        ComparePlan {
            status: true,
            headers: vec![http::header::CONTENT_TYPE],
            body,
            ignore_fields: ignore
                .iter()
                .map(|path| path.split('.').map(str::to_string).collect())
                .collect(),
            max_body: 1 << 20,
            keep_diffs: 10,
        }
    }

    fn answer<'a>(status: u16, headers: &'a http::HeaderMap, body: &'a [Bytes]) -> Answer<'a> {
        Answer {
            status,
            headers,
            body,
            body_truncated: false,
        }
    }

    #[test]
    fn json_bodies_compare_without_key_order_and_ignored_fields() {
        let headers = http::HeaderMap::new();
        let primary = [Bytes::from_static(
            br#"{"id":1,"meta":{"at":"10:00","v":1},"items":[{"id":1,"ts":5}]}"#,
        )];
        let shadow = [Bytes::from_static(
            br#"{"items":[{"ts":9,"id":1}],"meta":{"v":1,"at":"10:01"},"id":1}"#,
        )];
        let lenient = plan(BodyComparison::Json, &["meta.at", "items.*.ts"]);
        assert!(
            compare(
                &lenient,
                &answer(200, &headers, &primary),
                &answer(200, &headers, &shadow)
            )
            .is_none()
        );
        let strict = plan(BodyComparison::Json, &["meta.at"]);
        let mismatch = compare(
            &strict,
            &answer(200, &headers, &primary),
            &answer(200, &headers, &shadow),
        )
        .expect("ts differs");
        assert_eq!(mismatch.differences, vec!["body".to_string()]);
        assert!(
            mismatch.unified_diff.contains("-      \"ts\": 5"),
            "{}",
            mismatch.unified_diff
        );
        assert!(
            mismatch.unified_diff.contains("+      \"ts\": 9"),
            "{}",
            mismatch.unified_diff
        );
    }

    #[test]
    fn status_and_header_differences_are_named_and_diffed() {
        let mut json = http::HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        let mut text = http::HeaderMap::new();
        text.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let body = [Bytes::from_static(b"same")];
        let mismatch = compare(
            &plan(BodyComparison::Exact, &[]),
            &answer(200, &json, &body),
            &answer(500, &text, &body),
        )
        .expect("differs");
        assert_eq!(mismatch.differences, vec!["status", "header:content-type"]);
        assert!(mismatch.unified_diff.contains("--- primary"));
        assert!(mismatch.unified_diff.contains("-status: 200"));
        assert!(mismatch.unified_diff.contains("+status: 500"));
        assert!(mismatch.unified_diff.contains("+content-type: text/plain"));
    }

    #[test]
    fn truncated_bodies_are_not_compared() {
        let headers = http::HeaderMap::new();
        let one = [Bytes::from_static(b"one")];
        let two = [Bytes::from_static(b"two")];
        let mut shadow = answer(200, &headers, &two);
        shadow.body_truncated = true;
        assert!(
            compare(
                &plan(BodyComparison::Exact, &[]),
                &answer(200, &headers, &one),
                &shadow
            )
            .is_none()
        );
        assert!(
            compare(
                &plan(BodyComparison::Exact, &[]),
                &answer(200, &headers, &one),
                &answer(200, &headers, &two)
            )
            .is_some()
        );
    }
}
